"""The VMs slice: define, run, show, list and remove VMs; every other verb of a VM's life is
delegated to the use-case module that owns it (lifecycle, saved state, warm starts, export).
"""

from __future__ import annotations

import asyncio
import builtins
import errno
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from corral.domain import specs as sp
from corral.domain.sizes import parse_size
from corral.domain.states import State
from corral.errors import AlreadyExists, CorralError, DiskFull, InvalidSpec, InvalidState
from corral.images import catalog
from corral.service import access, hostfacts, nics, provision, quotas
from corral.service.lifecycle import Lifecycle
from corral.service.provision import make_vm_dir, remove_vm_dir
from corral.service.runtime import READY_TIMEOUT, VMRuntime
from corral.store.db import VMRecord

if TYPE_CHECKING:
    from corral.service.exporting import Plan
    from corral.service.netstate import Networks
    from corral.service.scheduling import Scheduler

MAX_LOG_READ = 16 << 20


class VMs:
    """Virtual machines: lifecycle, state, logs and events."""

    def __init__(self, rt: VMRuntime, sched: Scheduler, net: Networks) -> None:
        self.rt = rt
        self.sched = sched
        self.net = net
        self.life = Lifecycle(rt, sched)

    # ----- define ----------------------------------------------------------------------------
    async def create(self, body: dict[str, Any], *, start: bool = False, wait: bool = False,
                     timeout: float = READY_TIMEOUT, queue: bool = True,
                     ahead: bool = False) -> dict[str, Any]:
        """Define a VM; with ``start`` also boot it (all or nothing: a failed start removes
        the VM it defined). ``from_snapshot`` in the body makes it a warm start. ``ahead``
        lets it take capacity that fits even with requests waiting in the queue.

        :raises InvalidSpec: a field is wrong (named in the error).
        :raises AlreadyExists: the name is taken.
        """
        if body.get("from_snapshot") is not None:
            from corral.service import warm

            req = sp.parse_create(body)
            rec = await warm.define_warm(self.rt, req.name, str(body["from_snapshot"]),
                                         sp.scheduling(req, hostfacts.facts()))
            start, wait = True, wait or start  # a warm start runs at once
        else:
            rec = await self.define(body)
        if not start:
            return self.rt.view(rec)
        try:
            return await self.life.start(rec.name, wait=wait, timeout=timeout, queue=queue,
                                         ahead=ahead)
        except BaseException:  # all or nothing: a VM that never ran is removed
            gone = self.rt.db.get_vm(rec.name)
            if gone is not None and gone.state == State.DEFINED:
                await self.rm(rec.name)
            raise

    def check(self, body: dict[str, Any], *, host: bool = True, exists: bool = False
              ) -> None:
        """Refuse ``body`` as :meth:`create` would before it makes anything, making nothing
        (a stack's plan asks); ``host``: also against this host (its memory, CPUs, images);
        ``exists``: only what a VM that exists may change (its hardware, its scheduling).

        :raises InvalidSpec: naming the field.
        """
        req = sp.parse_create(body)
        if not host:
            return
        facts = hostfacts.facts()
        sp.scheduling(req, facts)
        if body.get("from_snapshot") is None:
            memory = sp.validate_against_host(req, facts)
            if not exists:
                _resolve(self.rt, req, memory)
                provision.seed_user_data(req)

    async def define(self, body: dict[str, Any]) -> VMRecord:
        """Make a VM's record and its disks; nothing boots. A failure leaves nothing (the
        uploads it names are used up either way)."""
        req = sp.parse_create(body)
        try:
            return await self._define(req)
        except BaseException:
            provision.drop_uploads(req, self.rt.paths.home)
            raise

    async def _define(self, req: sp.VMCreate) -> VMRecord:
        rt = self.rt
        if req.host is not None or req.on:
            raise InvalidSpec("host" if req.host is not None else "on",
                              "placing on hosts needs a cluster (corral serve --cluster URL)")
        memory = sp.validate_against_host(req, hostfacts.facts())
        async with rt.lock(req.name):
            if rt.db.get_vm(req.name) is not None:
                raise AlreadyExists(f"a VM named '{req.name}' exists; pick another name or "
                                    f"'corral rm {req.name}'")
            spec = _resolve(rt, req, memory)
            spec.sched = sp.scheduling(req, hostfacts.facts())
            project = access.project_for_new()
            quotas.check_vm(rt, project, spec.cpus, spec.memory_bytes)
            await quotas.check_disk(rt, project, sum(
                parse_size(f"disks.{i}.size", d.size, default_unit="G")
                for i, d in enumerate(req.disks) if d.size is not None))
            vm_dir = rt.paths.vm_dir(req.name)
            remove_vm_dir(vm_dir)  # left by a crash between mkdir and commit
            make_vm_dir(vm_dir, req.ha)
            # an HA VM's files: on shared storage, at the same path on every host
            files = vm_dir.resolve() if req.ha else vm_dir
            try:
                home = rt.paths.home
                if req.kernel:
                    spec.kernel = provision.boot_file("kernel", req.kernel, files, home)
                    spec.initrd = req.initrd and provision.boot_file("initrd", req.initrd,
                                                                     files, home)
                spec.disks = await provision.prepare_disks(req.disks, files, home)
                image = catalog.find(rt.paths, spec.image) if spec.image else None
                if image is not None and image.disk is not None:
                    root = await provision.make_root(image.disk, files, image.root_bus,
                                                     boot=spec.kernel is None)
                    spec.disks.insert(0, root)
                if req.user_data is not None or req.ssh_keys or req.hostname:
                    spec.disks.append(provision.make_seed(files, req))
                vmstate = Path(await provision.make_vmstate(vm_dir))
                spec.vmstate = str(files / vmstate.name)
                nics.plan_nics(self.net, spec)  # no await until add_vm: addresses stay ours
                rec = VMRecord(name=req.name, uid=str(uuid.uuid4()), spec=spec,
                               state=State.DEFINED, project=project)
                quotas.check_vm(rt, project, spec.cpus, spec.memory_bytes)  # others meanwhile
                rt.db.add_vm(rec)
            except BaseException as err:
                remove_vm_dir(vm_dir)
                if isinstance(err, OSError) and err.errno == errno.ENOSPC:
                    raise DiskFull(f"cannot create '{req.name}': the disk holding "
                                   f"{rt.paths.home} is full; free some space") from err
                raise
        return rec

    # ----- read ------------------------------------------------------------------------------
    def list(self) -> builtins.list[dict[str, Any]]:
        return [self.rt.view(r) for r in self.rt.db.list_vms() if access.in_scope(r.project)]

    def view(self, name: str) -> dict[str, Any]:
        """One VM as the store knows it (no call to its machine: cheap).

        :raises NotFound: no VM of that name.
        """
        return self.rt.view(self.rt.get(name))

    async def get(self, name: str) -> dict[str, Any]:
        """One VM, with QEMU's own run state asked live.

        :raises NotFound: no VM of that name.
        """
        rt = self.rt
        view = rt.view(rt.get(name))
        view["qemu_status"] = None
        live = rt.live.get(name)
        if live is not None:
            try:
                view["qemu_status"] = await live.machine.status(timeout=2)
                per_node = await live.machine.block_stats()
                for i, disk in enumerate(view["disks"]):
                    disk["stats"] = per_node.get(disk.get("id") or f"disk{i}")
            except (CorralError, OSError):
                pass  # the machine is ending: the view says what the store knows
        await nics.live(self.net, name, view)
        return view

    def logs(self, name: str, offset: int = 0, limit: int = 1 << 20) -> dict[str, Any]:
        """The serial log from byte ``offset`` (negative: from the end): ``{"data",
        "offset"}`` (the next offset).

        :raises InvalidSpec: ``limit`` is not between 0 and 16 MiB.
        """
        self.rt.get(name)
        if not 0 <= limit <= MAX_LOG_READ:
            raise InvalidSpec("limit", f"read at most {MAX_LOG_READ} bytes at once")
        path = self.rt.paths.vm_dir(name) / "serial.log"
        try:
            with path.open("rb") as f:
                size = f.seek(0, 2)
                offset = max(0, size + offset) if offset < 0 else min(offset, size)
                f.seek(offset)
                data = f.read(limit)
        except FileNotFoundError:
            data = b""
        return {"data": data.decode(errors="replace"), "offset": offset + len(data)}

    def events(self, since: int = 0, vm: str | None = None, tail: int | None = None,
               limit: int = 1000, project: str | None = None
               ) -> builtins.list[dict[str, Any]]:
        """The event log after id ``since`` (``tail``: only its last ``tail`` events, else
        the first ``limit``): the caller's own project only (a local caller: every
        project, or ``project``)."""
        scope = access.current().scope
        if scope is not None and project is not None and project != scope:
            return []
        self.rt.db.flush()  # records queued behind earlier answers (audit) are in the log
        if tail is not None:
            return self.rt.db.events(since, vm, limit=tail, tail=True, project=scope or project)
        return self.rt.db.events(since, vm, limit, project=scope or project)

    # ----- remove ----------------------------------------------------------------------------
    async def rm(self, name: str) -> None:
        """Stop the VM if it runs and remove everything Corral made for it.

        :raises NotFound: no VM of that name.
        """
        rt = self.rt
        async with rt.lock(name):
            rec = rt.get(name)
            if rec.state == State.QUEUED:
                self.sched.cancel(rec, State.DEFINED)
            live = rt.live.get(name)
            if live is not None:
                live.expected_exit = "destroyed"
                await rt.kill(live)
            rt.driver.cleanup(rt.run_dir(name))
            from corral.service import snapshots

            await snapshots.templates_settled(rt, name)
            rec = rt.get(name)
            for disk in rec.spec.disks:
                if disk.name:  # a named disk outlives the VM; it is only detached
                    rt.db.set_disk_vm(disk.name, None)
            rt.db.delete_vm(name)
            remove_vm_dir(rt.paths.vm_dir(name))
            await rt.hooks.forget(name, rec.spec)
        rt.forget(name)

    async def set_hardware(self, name: str, *, cpus: int | None = None,
                           memory: str | int | None = None) -> dict[str, Any]:
        """Change the CPUs or memory of a VM that is not running (the next start has them).

        :raises InvalidState: it runs, is queued or saved.
        :raises InvalidSpec: a value the host cannot give.
        :raises QuotaExceeded: its project has no room for what it grows by.
        """
        rt = self.rt
        async with rt.lock(name):
            rec = rt.get(name)
            idle = (State.DEFINED, State.STOPPED, State.CRASHED)
            if rec.state not in idle:
                raise InvalidState(name, "change the hardware of", rec.state.value,
                                   [s.value for s in idle])
            body = {"name": name, "cpus": rec.spec.cpus if cpus is None else cpus,
                    "memory": f"{rec.spec.memory_bytes >> 20}M" if memory is None else memory}
            req = sp.parse_create(body)
            new_memory = sp.validate_against_host(req, hostfacts.facts())
            quotas.check_vm(rt, rec.project, req.cpus - rec.spec.cpus,
                            new_memory - rec.spec.memory_bytes, vms=0)
            old = {"cpus": rec.spec.cpus, "memory_bytes": rec.spec.memory_bytes}
            rec.spec.cpus, rec.spec.memory_bytes = req.cpus, new_memory
            rt.db.update_vm(rec, "hardware_changed", {"old": old, "cpus": req.cpus,
                                                      "memory_bytes": new_memory})
        return rt.view(rec)

    # ----- the rest of a VM's life -------------------------------------------------------------
    async def start(self, name: str, *, wait: bool = False, timeout: float = READY_TIMEOUT,
                    queue: bool = True) -> dict[str, Any]:
        return await self.life.start(name, wait=wait, timeout=timeout, queue=queue)

    async def wait_ready(self, name: str, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
        return await self.life.wait_ready(name, timeout)

    async def pause(self, name: str) -> dict[str, Any]:
        return await self.life.pause(name)

    async def resume(self, name: str) -> dict[str, Any]:
        return await self.life.resume(name)

    async def shutdown(self, name: str, timeout: float = 60.0) -> dict[str, Any]:
        return await self.life.shutdown(name, timeout)

    async def stop(self, name: str, *, force: bool = True, timeout: float = 60.0
                   ) -> dict[str, Any]:
        return await self.life.stop(name, force=force, timeout=timeout)

    async def reboot(self, name: str, *, wait: bool = False, timeout: float = READY_TIMEOUT
                     ) -> dict[str, Any]:
        return await self.life.reboot(name, wait=wait, timeout=timeout)

    async def save(self, name: str) -> dict[str, Any]:
        from corral.service import saved

        return await saved.save(self.rt, name)

    def saved_state(self, name: str) -> AbstractAsyncContextManager[
            tuple[int, AsyncIterator[bytes]]]:
        """The saved state's size and bytes, the VM held still while they are read
        (``async with``). :raises InvalidState: the VM is not saved."""
        from corral.service import saved

        return saved.reading(self.rt, name)

    async def restore(self, name: str, *, wait: bool = False, timeout: float = READY_TIMEOUT,
                      queue: bool = True) -> dict[str, Any]:
        from corral.service import saved

        return await saved.restore(self.rt, self.sched, name, wait, timeout, queue)

    async def clone(self, name: str, new: str, *, full: bool = False,
                    snapshot: str | None = None) -> dict[str, Any]:
        from corral.service import warm

        return await warm.clone(self.rt, name, new, full, snapshot)

    def export(self, name: str, *, live: bool = False) -> AbstractAsyncContextManager[Plan]:
        """The VM's export archive to send (``async with``: the VM is held still, and with
        ``live`` a running VM paused, until the block ends). :raises InvalidState: the VM
        has a live QEMU and ``live`` is false."""
        from corral.service import exporting

        return exporting.exporting(self.life, name, live)

    async def import_(self, *, upload: str | None = None, file: str | None = None,
                      name: str | None = None) -> dict[str, Any]:
        """Recreate a VM from an export: an upload (used up) or a file the host allows.

        :raises InvalidSpec: not a whole Corral export, or neither or both of upload and
            file. :raises PathNotAllowed: ``file`` is outside the allowed directories.
        """
        from corral.service import hostpaths, portable
        from corral.service.uploads import Uploads

        if (upload is None) == (file is None):
            raise InvalidSpec("upload", "give an upload id (or a file the host allows)")
        path = (Uploads(self.rt.paths.home).path(upload) if upload is not None
                else hostpaths.check("file", str(file), self.rt.paths))
        try:
            view = await asyncio.to_thread(portable.import_vm, self.rt, path, name,
                                           "upload" if upload else None)
        finally:
            if upload is not None:
                path.unlink(missing_ok=True)
        try:  # its disks' sizes are known once unpacked: over the quota, it goes again
            await quotas.check_disk(self.rt, view["project"], 0, counted=True)
        except CorralError:
            await self.rm(view["name"])
            raise
        return view


def _resolve(rt: VMRuntime, req: sp.VMCreate, memory: int) -> sp.VMSpec:
    """Kernel, initrd and command line come from ``--kernel`` … when given, else from the
    image; an image with a disk gives the VM an overlay of it either way."""
    image = None
    if req.image or not req.kernel:
        default = sp.DEFAULT_IMAGE if req.arch in (None, "x86_64") else "tiny-arm64"
        image = catalog.resolve(rt.paths, req.image or default)
    image_name, arch = (image.name, image.arch) if image else (None, req.arch or "x86_64")
    if req.arch is not None and req.arch != arch:
        raise InvalidSpec("arch", f"image '{image_name}' is {arch}, not {req.arch}; pick an "
                                  f"{req.arch} image (e.g. tiny-arm64)")
    if arch not in sp.MACHINES:
        raise InvalidSpec("arch", f"{arch} guests are not supported")
    manifest = image.manifest if image else {}
    machine = req.machine or manifest.get("machine") or sp.MACHINES[arch][0]
    if machine not in sp.MACHINES[arch]:
        raise InvalidSpec("machine", f"{machine} is not an {arch} machine; use "
                                     + " or ".join(sp.MACHINES[arch]))
    if req.kernel:  # placed by define (provision.boot_file): uploads move into the VM
        for field, text in (("kernel", req.kernel), ("initrd", req.initrd)):
            if text:
                provision.check_boot_file(field, text, rt.paths.home)
        kpath: str | None = req.kernel
        ipath = req.initrd
        cmdline = req.cmdline or "console=ttyS0 panic=-1"
    else:
        assert image is not None
        kpath = str(image.kernel) if image.kernel else None
        ipath = str(image.initrd) if image.initrd else None
        cmdline = req.cmdline or image.cmdline
    nic_specs = [sp.NicSpec(mode=n.mode or ("network" if n.network else "user"),
                            mac=(n.mac or sp.new_mac()).lower(), network=n.network,
                            ip=n.ip, fixed_ip=n.ip is not None, hostfwd=n.hostfwd)
                 for n in (req.nics if req.nics is not None else [sp.NicRequest()])]
    return sp.VMSpec(name=req.name, arch=cast(sp.Arch, arch), image=image_name,
                     cpus=req.cpus, memory_bytes=memory, kernel=kpath, initrd=ipath,
                     cmdline=cmdline, machine=cast(sp.Machine, machine),
                     cpu_model=req.cpu_model or manifest.get("cpu") or "max", disks=[],
                     nics=nic_specs, agent=image.agent if image else True)
