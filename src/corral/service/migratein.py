"""The target's half of a live migration (``corral migrate VM --to HOST``; the source's half
is :mod:`corral.service.clustermigrate`).

The source's daemon asks, over this host's authenticated TLS API, for a place for its VM.
This host refuses before anything is made when it cannot take it (no such image here, not
enough room: the capacity is reserved through the scheduler now), then makes the VM's
files (its own disks blank and of the same virtual size, the root disk an overlay of this
host's copy of the image; read-only files such as a cloud-init seed are sent whole), plugs
the same NICs (same MACs) and starts QEMU waiting for the state (``incoming``, held), listening
on this host's underlay address, with an NBD server for the local disks the source copies
live.

Until the switch the VM has no record here and its cluster-wide name stays the source's:
fencing and adoption do not see it, and requests about the VM still go to the source. A
watcher waits for the state to arrive; then, in one transaction, the name moves here with
the new record (:func:`corral.store.hostmoves.take_over_vm`) and only then does the guest
run. So whichever daemon dies mid-way, the VM runs on exactly one host: the source keeps
running it until the name has moved (and fences its stopped copy after), and a target whose
QEMU dies or is told to give up removes everything it made (QEMU, taps, files, reservation).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import shutil
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral import settings
from corral.domain.specs import DiskSpec, Migrated, VMSpec
from corral.domain.states import State
from corral.engine.driver import LaunchOptions
from corral.errors import AlreadyExists, CorralError, InvalidSpec, MigrationFailed, NotFound
from corral.host import qemu_img
from corral.images import catalog
from corral.service import migratetls, provision
from corral.service.runtime import Live
from corral.store import hostmoves
from corral.store.db import VMRecord

if TYPE_CHECKING:
    from corral.service.runtime import VMRuntime
    from corral.service.scheduling import Scheduler

log = logging.getLogger(__name__)
POLL = 0.02          # seconds between looks at the waiting QEMU
MAX_SENT = 16 << 20  # bytes of a read-only file the source may send whole


@dataclass
class Incoming:
    """One VM arriving here."""

    rec: VMRecord
    source: str
    limit: float = 660.0  # seconds it may take to arrive
    live: Live | None = None
    done: asyncio.Future[dict[str, Any]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    task: asyncio.Task[None] | None = None


class Arrivals:
    """The VMs being migrated to this host, by name."""

    def __init__(self, rt: VMRuntime, sched: Scheduler, host: str,
                 endpoint: tuple[str, str] | None) -> None:
        self.rt = rt
        self.sched = sched
        self.host = host
        self.endpoint = endpoint
        self.arriving: dict[str, Incoming] = {}
        self.on_arrival: Any = None  # async callable run after a VM arrived (a heartbeat)

    def address(self) -> str:
        """This host's underlay address (where peers reach its API), without the port."""
        address = str(settings.value("cluster.address")) or (
            self.endpoint[0] if self.endpoint else "")
        host = address.rpartition(":")[0].strip("[]")
        if not host or host in ("0.0.0.0", "::"):
            raise CorralError(f"host {self.host} has no address other hosts reach it at "
                              "(--address); it cannot take live migrations")
        return host

    async def prepare(self, name: str, source: str, body: dict[str, Any]) -> dict[str, Any]:
        """Make a place for VM ``name`` of host ``source`` and wait for its state there;
        returns where the source sends it: ``{"uri", "nbd", "disks"}``.

        :raises AlreadyExists: a VM of that name is here (or arriving).
        :raises NotFound: no such image here. :raises NoCapacity: no room.
        :raises InvalidSpec: the request is not one this host can follow.
        """
        if self.rt.db.get_vm(name) is not None or name in self.arriving:
            raise AlreadyExists(f"host {self.host} already has a VM named '{name}'")
        try:
            spec = VMSpec.model_validate(body["spec"])
        except Exception as err:
            raise InvalidSpec("spec", f"not a VM spec: {err}") from err
        if spec.image is not None and catalog.find(self.rt.paths, spec.image) is None:
            raise NotFound(f"host {self.host} has no image '{spec.image}'; build or copy it "
                           "there first")
        rec = VMRecord(name=name, uid=str(body.get("uid") or uuid.uuid4()), spec=spec,
                       state=State.RESTORING, project=str(body.get("project", "default")),
                       started_at=body.get("started_at"), created_at=time.time())
        began = time.monotonic()
        self.sched.reserve_now(rec)  # :raises NoCapacity: before anything is made
        arrival = Incoming(rec, source, float(body.get("timeout") or 600.0) + 60.0)
        self.arriving[name] = arrival
        try:
            mirror = await self._make_files(rec, body)
            arrival.live = await self.rt.spawn(rec, LaunchOptions(incoming=True, hold=True))
            arrival.live.expected_exit = "migration did not arrive"
            address = self.address()
            uri, nbd = f"tcp:{address}:{_free_port(address)}", None
            if mirror:
                nbd = f"{address}:{_free_port(address)}"
            tls = None
            if isinstance(body.get("tls"), dict) and settings.value("cluster.migrate_tls"):
                tls = migratetls.write(self.rt.paths.vm_dir(name), "server",
                                       {k: str(body["tls"].get(k, "")) for k in
                                        ("ca", "cert", "key")})
            await arrival.live.machine.serve_incoming(
                uri, nbd=nbd, disks=tuple(mirror), postcopy=bool(body.get("postcopy")),
                tls=tls)
            rec.spec.migrated = Migrated(source=source, at=time.time(),
                                         encrypted=tls is not None)
        except BaseException:
            await self._undo(arrival)
            raise
        arrival.task = asyncio.create_task(self._watch(arrival), name=f"migrate-in-{name}")
        log.info("a place for %s of host %s made in %.2f s (%s)", name, source,
                 time.monotonic() - began, "encrypted" if tls is not None else "in clear")
        return {"uri": uri, "nbd": nbd, "disks": mirror, "host": self.host,
                "tls": tls is not None}

    async def _make_files(self, rec: VMRecord, body: dict[str, Any]) -> list[str]:
        """The VM's directory and files here; the disk nodes the source mirrors."""
        spec, vm_dir = rec.spec, self.rt.paths.vm_dir(rec.name)
        provision.remove_vm_dir(vm_dir)
        shared = body.get("shared")
        if spec.sched.ha:
            if not shared or not Path(shared).is_dir():
                raise InvalidSpec("ha", f"host {self.host} does not see the VM's shared "
                                        f"files ({shared})")
            vm_dir.parent.mkdir(parents=True, exist_ok=True)
            vm_dir.symlink_to(shared)
            return []  # the same files: nothing to copy
        vm_dir.mkdir(parents=True)
        image = catalog.find(self.rt.paths, spec.image) if spec.image else None
        if image is not None:
            spec.kernel = str(image.kernel) if image.kernel else None
            spec.initrd = str(image.initrd) if image.initrd and image.kernel else None
        sizes = {int(d["index"]): int(d["size"]) for d in body.get("disks", [])}
        files = dict(body.get("files", {}))
        mirror = []
        for i, disk in enumerate(spec.disks):
            path = vm_dir / Path(disk.path).name
            if disk.readonly:
                data = base64.b64decode(files.get(Path(disk.path).name, ""))
                if not data:
                    raise InvalidSpec(f"disks.{i}", "its contents were not sent")
                path.write_bytes(data)
            elif disk.id == "root" and image is not None and image.disk is not None:
                info = await qemu_img.ainfo(image.disk)
                await qemu_img.acreate(path, "qcow2", sizes.get(i), backing=image.disk.absolute(),
                                       backing_format=info.format,
                                       what="qemu-img could not make the root disk")
                mirror.append(disk.node(i))
            else:
                if i not in sizes:
                    raise InvalidSpec(f"disks.{i}", "its size was not sent")
                await qemu_img.acreate(path, disk.format, sizes[i],
                                       what="qemu-img could not make the disk copy")
                mirror.append(disk.node(i))
            spec.disks[i] = DiskSpec.model_validate({**disk.model_dump(), "path": str(path)})
        if spec.vmstate:
            spec.vmstate = await provision.make_vmstate(vm_dir)
        spec.warm_template = spec.launched_as = None
        return mirror

    async def _watch(self, arrival: Incoming) -> None:
        """Wait for the state; then move the name here and run the guest (see the module)."""
        rec, live = arrival.rec, arrival.live
        assert live is not None
        try:
            await self._arrived(arrival, live)
            rec.state, rec.pid, rec.pid_start = State.RUNNING, live.machine.pid, \
                live.machine.started
            rec.accel = self.rt.accel
            await asyncio.to_thread(hostmoves.take_over_vm, self.rt.db, rec, arrival.source)
        except BaseException as err:
            await self._undo(arrival)
            _settle(arrival.done, err)
            return
        live.expected_exit = None
        try:
            await live.machine.finish_incoming(60)
            migratetls.remove(self.rt.paths.vm_dir(rec.name), "server")
        except CorralError as err:  # the name is ours: the VM crashed here
            log.error("migrated VM %s did not run on: %s", rec.name, err)
            rec.exit_reason = f"after its migration: {err.message}"
            live.machine.kill()
        else:
            self.rt.watch_ready(rec.name, live, fresh=True)
        self.arriving.pop(rec.name, None)
        if self.on_arrival is not None:
            with contextlib.suppress(CorralError):
                await self.on_arrival()
        if not arrival.done.done():
            arrival.done.set_result({**self.rt.view(self.rt.get(rec.name)), "host": self.host})

    async def _arrived(self, arrival: Incoming, live: Live) -> None:
        """Wait while the state streams in.

        :raises MigrationFailed: QEMU ended (the stream broke) or the time is up.
        """
        deadline = time.monotonic() + arrival.limit
        while live.machine.alive:
            try:
                if await live.machine.status() != "inmigrate":
                    return
            except CorralError:
                if await live.machine.wait_exit(5):
                    break  # it ended while we asked
                raise
            if time.monotonic() > deadline:  # the source gave up without telling us
                raise MigrationFailed(f"'{arrival.rec.name}' did not arrive within "
                                      f"{arrival.limit:g} s", "incoming")
            await asyncio.sleep(POLL)
        raise MigrationFailed(f"'{arrival.rec.name}' did not arrive on host {self.host}: "
                              "the stream broke", "incoming")

    async def outcome(self, name: str, timeout: float) -> dict[str, Any]:
        """The VM as it runs here once it arrived.

        :raises MigrationFailed: it did not arrive. :raises NotFound: none is arriving.
        """
        arrival = self.arriving.get(name)
        if arrival is None:
            rec = self.rt.db.get_vm(name)
            if rec is not None:
                return {**self.rt.view(rec), "host": self.host}
            raise NotFound(f"no VM '{name}' is arriving on host {self.host}")
        try:
            return await asyncio.wait_for(asyncio.shield(arrival.done), timeout)
        except TimeoutError as err:
            raise MigrationFailed(f"'{name}' has not arrived on host {self.host} after "
                                  f"{timeout:g} s", "incoming") from err

    async def abort(self, name: str) -> dict[str, Any]:
        """Give up an arrival: everything made for it is removed (the source runs on)."""
        arrival = self.arriving.get(name)
        if arrival is None:
            return {"aborted": False}
        if arrival.live is not None and arrival.live.machine.alive:
            arrival.live.machine.kill()  # the watcher sees it and undoes the rest
        if arrival.task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(arrival.task), 30)
        else:
            await self._undo(arrival)
        return {"aborted": True}

    async def _undo(self, arrival: Incoming) -> None:
        name = arrival.rec.name
        live = arrival.live
        if live is not None:
            if live.machine.alive:
                await self.rt.kill(live)
            for _ in range(200):  # the runtime's exit handler frees taps and reservation
                if self.rt.live.get(name) is not live:
                    break
                await asyncio.sleep(0.01)
        self.rt.live.pop(name, None)
        self.sched.release(name)
        self.rt.hooks.unplug(name)
        self.rt.driver.cleanup(self.rt.run_dir(name))
        shutil.rmtree(self.rt.run_dir(name), ignore_errors=True)
        if self.rt.db.get_vm(name) is None:
            vm_dir = self.rt.paths.vm_dir(name)
            if vm_dir.is_symlink():  # an HA VM's shared files are the source's
                vm_dir.unlink()
            else:
                shutil.rmtree(vm_dir, ignore_errors=True)
        self.arriving.pop(name, None)


def _settle(done: asyncio.Future[dict[str, Any]], err: BaseException) -> None:
    if done.done():
        return
    done.add_done_callback(_seen)  # nobody may be waiting for it (the source went away)
    if isinstance(err, CorralError):
        done.set_exception(err)
    else:
        done.set_exception(MigrationFailed(f"the target failed: {err!r}", "incoming"))


def _seen(done: asyncio.Future[dict[str, Any]]) -> None:
    if not done.cancelled():
        done.exception()


def _free_port(address: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])
