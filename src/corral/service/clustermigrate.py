"""Live migration: ``corral migrate VM --to HOST`` moves a running VM to another host of the
cluster while it keeps running (the target's half is :mod:`corral.service.migratein`).

The daemon of the VM's host (a request sent elsewhere is forwarded there) checks what it can
alone (the VM runs, no NVMe disk, which QEMU cannot migrate, no internal snapshots, only its
own disks; the target is up and of the same architecture), then asks the target over its
authenticated TLS API for a place: the target refuses, before anything moves, when it lacks
the image or the room. The source's QEMU then sends its state (pre-copy with auto-converge
under ``max_downtime``, post-copy when asked, local disks mirrored to the target's NBD
server) while the guest runs; progress readings go to the caller as they come.

The VM's lock is held throughout, so no other operation changes it meanwhile. On success the
target has moved the VM's cluster-wide name to itself and runs the guest; only then does the
source forget its record and remove its files, taps and stopped QEMU. On a failure, a cut
link or ``--cancel`` the stream is stopped, the guest runs on here untouched, and the target
is told to remove what it made (it also does so by itself when its QEMU dies).

With ``cluster.migrate_tls`` (the default) on both hosts the stream and the disk copies
are encrypted with QEMU's TLS, with a CA made for this one migration
(:mod:`corral.service.migratetls`); otherwise they go in clear. The answer says
``"encrypted"`` either way, and the target records it for ``corral show``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral import settings
from corral.domain.states import State
from corral.engine.driver import MigrationOptions, MigrationProgress
from corral.errors import (
    CorralError,
    HostUnavailable,
    InvalidSpec,
    InvalidState,
    MigrationFailed,
    NotFound,
)
from corral.host import qemu_img
from corral.service import migratetls
from corral.service.migratein import MAX_SENT
from corral.store import hostmoves

if TYPE_CHECKING:
    from corral.service.cluster import Member
    from corral.store.db import VMRecord

#: asks another host's API: (its route: host, address, fingerprint, api_token; method; url;
#: JSON body or None; timeout in seconds) → its JSON answer (errors raised as they came)
PeerCall = Callable[[dict[str, Any], str, str, dict[str, Any] | None, float],
                    Awaitable[dict[str, Any]]]
Report = Callable[[dict[str, Any]], None]
STALL = 8.0  # seconds without a byte moving before the link counts as cut
FLOWING = ("active", "copying disks", "postcopy-active")  # statuses in which bytes move
ABORT_TIMEOUT = 10.0  # seconds the target gets to hear that an attempt is given up
ABORT_TRIES = 24      # and how often it is told again when it cannot be reached
PREPARE_TIMEOUT = 60.0  # seconds the target gets to make a place (files, a waiting QEMU)


@dataclass
class Departure:
    """A migration under way from this host."""

    to: str
    cancelled: bool = False
    machine: Any = None
    last: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Asked:
    """What the caller asked for."""

    to: str
    postcopy: bool = False
    max_downtime: float = 0.3   # seconds
    timeout: float = 600.0
    bandwidth: int | None = None  # bytes per second; None: as fast as the link


def progress_view(p: MigrationProgress) -> dict[str, Any]:
    return {"status": p.status, "transferred": p.transferred, "remaining": p.remaining,
            "total": p.total, "dirty_rate": p.dirty_rate,
            "expected_downtime": p.expected_downtime, "passes": p.passes,
            "disk_done": p.disk_done, "disk_total": p.disk_total, "postcopy": p.postcopy}


def check_movable(member: Member, rec: VMRecord) -> None:
    """What this host alone can refuse.

    :raises InvalidState: the VM does not run, or is migrating already.
    :raises InvalidSpec: a device, disk or snapshot that cannot move live.
    """
    name, spec = rec.name, rec.spec
    if rec.state != State.RUNNING:
        raise InvalidState(name, "migrate", rec.state.value, ["running"])
    if name in member.departures:
        raise InvalidState(name, "migrate", "migrating", ["running"])
    if any(d.bus == "nvme" for d in spec.disks):
        raise InvalidSpec("vm", f"'{name}' has an NVMe disk, which QEMU cannot migrate "
                                "live; stop it and use 'corral move'")
    if member.rt.db.list_snapshots(name):
        raise InvalidSpec("vm", f"'{name}' has snapshots, which a live migration does not "
                                "carry; delete them or stop it and use 'corral move'")
    if spec.sched.ha:
        return
    vm_dir = member.rt.paths.vm_dir(name)
    for i, d in enumerate(spec.disks):
        if not d.owned or d.name or Path(d.path).parent != vm_dir:
            raise InvalidSpec(f"disks.{i}", f"'{d.path}' is not a file of the VM's own; a "
                                            "live migration copies only its own disks")
        if d.readonly and Path(d.path).stat().st_size > MAX_SENT:
            raise InvalidSpec(f"disks.{i}", "a read-only disk larger than "
                                            f"{MAX_SENT >> 20} MiB cannot be sent")
    if spec.image is None and spec.kernel:
        raise InvalidSpec("vm", f"'{name}' boots a kernel uploaded to this host; stop it and "
                                "use 'corral move'")


async def _target(member: Member, to: str) -> dict[str, Any]:
    """The route to host ``to``'s API. :raises NotFound, HostUnavailable, InvalidSpec:"""
    hosts = {h["name"]: h for h in await member.hosts()}
    if to not in hosts:
        raise NotFound(f"no host '{to}' in the cluster; see 'corral host list'")
    if hosts[to]["state"] != "up":
        raise HostUnavailable(f"host {to} is {hosts[to]['state']}: it takes no VMs", to)
    mine = hosts.get(member.name, {}).get("arch") or os.uname().machine
    if hosts[to].get("arch") and hosts[to]["arch"] != mine:
        raise InvalidSpec("to", f"host {to} is {hosts[to]['arch']}, this host {mine}: a VM "
                                "migrates only between hosts of one architecture")
    peer = await asyncio.to_thread(member.cs.peer, to)
    if peer is None:
        raise HostUnavailable(f"host {to} serves no API to migrate to (--listen)", to)
    address, fingerprint, token = peer
    return {"host": to, "address": address, "fingerprint": fingerprint, "api_token": token}


async def _request(member: Member, rec: VMRecord, asked: Asked) -> dict[str, Any]:
    """What the target is told: the spec, the sizes of the disks it makes, small files."""
    disks, files = [], {}
    for i, d in enumerate(rec.spec.disks):
        if rec.spec.sched.ha:
            break
        if d.readonly:
            data = await asyncio.to_thread(Path(d.path).read_bytes)
            files[Path(d.path).name] = base64.b64encode(data).decode()
        else:
            disks.append({"index": i, "size": (await qemu_img.ainfo(d.path)).virtual_size})
    vm_dir = member.rt.paths.vm_dir(rec.name)
    return {"spec": rec.spec.model_dump(mode="json"), "uid": rec.uid, "project": rec.project,
            "started_at": rec.started_at, "disks": disks, "files": files,
            "postcopy": asked.postcopy, "timeout": asked.timeout,
            "shared": str(vm_dir.resolve()) if rec.spec.sched.ha else None}


async def migrate(member: Member, name: str, asked: Asked, call: PeerCall,
                  report: Report | None = None) -> dict[str, Any]:
    """Move running VM ``name`` of this host to host ``asked.to`` (see the module); the VM
    as it runs there, with ``migration`` (times, bytes, encrypted).

    :raises MigrationFailed: the stream failed, was cancelled or could not converge (the VM
        runs on here). And what :func:`check_movable` and the target refuse.
    """
    rt = member.rt
    check_movable(member, rt.get(name))
    if asked.to == member.name:
        raise InvalidSpec("to", f"'{name}' is already on host {asked.to}")
    route = await _target(member, asked.to)
    departure = Departure(asked.to)
    member.departures[name] = departure
    try:
        async with rt.lock(name):
            rec = rt.get(name)
            if rec.state != State.RUNNING:
                raise InvalidState(name, "migrate", rec.state.value, ["running"])
            moved = await _run(member, rec, asked, route, call, departure, report)
    finally:
        member.departures.pop(name, None)
    if rt.db.get_vm(name) is None:
        rt.forget(name)  # its lock
    return moved


async def _run(member: Member, rec: VMRecord, asked: Asked, route: dict[str, Any],
               call: PeerCall, departure: Departure, report: Report | None
               ) -> dict[str, Any]:
    rt, name = member.rt, rec.name
    live = rt.machine(rec)
    departure.machine = live.machine
    query = f"?source={member.name}"
    body = await _request(member, rec, asked)
    creds = None
    if settings.value("cluster.migrate_tls"):
        creds = migratetls.issue(route["address"].rpartition(":")[0].strip("[]"))
        body["tls"] = creds["server"]
    plan = await _prepare(member, route, call, name, body)

    moved_at = [time.monotonic(), -1]  # when bytes last moved, and how many had

    def on_progress(p: MigrationProgress) -> None:
        if departure.cancelled:
            raise MigrationFailed(f"migration of '{name}' cancelled", "cancelled")
        now, sent = time.monotonic(), p.transferred + p.disk_done
        if sent != moved_at[1] or p.status not in FLOWING:
            moved_at[:] = [now, sent]
        elif now - moved_at[0] > STALL:
            raise MigrationFailed(f"no data reached host {asked.to} for {STALL:g} s: the link "
                                  f"is cut or the host stopped; '{name}' runs on here", "stream")
        departure.last = progress_view(p)
        if report is not None:
            report(departure.last)

    vm_dir = rt.paths.vm_dir(name)
    tls = migratetls.write(vm_dir, "client", creds["client"]) \
        if creds is not None and plan.get("tls") else None
    options = MigrationOptions(max_downtime=asked.max_downtime, postcopy=asked.postcopy,
                               bandwidth=asked.bandwidth, tls=tls,
                               mirror=tuple(plan.get("disks") or ()), nbd=plan.get("nbd"),
                               timeout=asked.timeout)
    try:
        if departure.cancelled:
            raise MigrationFailed(f"migration of '{name}' cancelled", "cancelled")
        result = await live.machine.migrate_to(plan["uri"], options, on_progress)
    except BaseException:
        await _abort(member, route, call, f"/v1/cluster/migrate-in/{name}{query}")
        raise
    finally:
        migratetls.remove(vm_dir, "client")
    try:
        moved = await call(route, "POST", f"/v1/cluster/migrate-in/{name}/outcome{query}",
                           None, 120.0)
    except CorralError as err:
        owner = await asyncio.to_thread(member.cs.owner_of, name)
        if owner == member.name:  # the target never took it: run on here
            await _abort(member, route, call, f"/v1/cluster/migrate-in/{name}{query}")
            await live.machine.cont()
            raise MigrationFailed(f"host {asked.to} did not take '{name}' ({err.message}); "
                                  "it runs on here", "switch") from err
        moved = {"name": name, "host": owner}
    await _let_go(member, rec)
    return {**moved, "migration": {
        "from": member.name, "to": asked.to, "total_time": round(result.total_time, 3),
        "downtime": result.downtime, "transferred": result.transferred,
        "postcopy": result.postcopy, "disks": list(options.mirror),
        "encrypted": tls is not None}}


async def _prepare(member: Member, route: dict[str, Any], call: PeerCall, name: str,
                   body: dict[str, Any]) -> dict[str, Any]:
    """Ask the target for a place: where to send the VM. A target that does not answer in
    :data:`PREPARE_TIMEOUT` (a link cut while it made the place: its answer is lost) is
    told to remove what it may have made, as after a failed stream.

    :raises MigrationFailed: no answer. And what the target refuses.
    """
    url = f"/v1/cluster/migrate-in/{name}?source={member.name}"
    try:
        return await call(route, "POST", url, body, PREPARE_TIMEOUT)
    except HostUnavailable as err:
        await _abort(member, route, call, url)
        why = err.message.split(": ", 1)[-1]  # without its "host X did not answer"
        raise MigrationFailed(f"host {route['host']} did not make a place for '{name}': "
                              f"{why}; the link is cut or the host stopped; '{name}' runs "
                              "on here", "setup") from err


async def _abort(member: Member, route: dict[str, Any], call: PeerCall, url: str) -> None:
    """Tell the target to remove what it made; when it cannot be reached now (a cut link),
    keep telling it in the background for a while (it also gives up by itself)."""
    try:
        await call(route, "DELETE", url, None, ABORT_TIMEOUT)
        return
    except CorralError:
        pass

    async def later() -> None:
        for _ in range(ABORT_TRIES):
            await asyncio.sleep(ABORT_TIMEOUT / 2)
            with contextlib.suppress(CorralError):
                await call(route, "DELETE", url, None, ABORT_TIMEOUT)
                return

    member.rt.background(later())


async def _let_go(member: Member, rec: VMRecord) -> None:
    """The VM runs on the target: forget it here, end the stopped QEMU, remove its files."""
    rt, name, spec = member.rt, rec.name, rec.spec
    live = rt.live.get(name)
    hostmoves.forget_vm(rt.db, name)  # the name is the target's already
    if live is not None:
        live.expected_exit = "migrated"
        await rt.kill(live)
    await rt.hooks.moved(name, spec)
    vm_dir = rt.paths.vm_dir(name)
    if vm_dir.is_symlink():  # an HA VM's files are on shared storage: the target uses them
        vm_dir.unlink()
    else:
        shutil.rmtree(vm_dir, ignore_errors=True)
    shutil.rmtree(rt.run_dir(name), ignore_errors=True)
    with contextlib.suppress(CorralError):
        await member.beat()


async def cancel(member: Member, name: str) -> dict[str, Any]:
    """Stop the migration of ``name`` under way here; the VM runs on here.

    :raises InvalidState: none is under way.
    """
    departure = member.departures.get(name)
    if departure is None:
        state = member.rt.get(name).state.value
        raise InvalidState(name, "cancel the migration of", state, ["migrating"])
    departure.cancelled = True
    if departure.machine is not None:
        with contextlib.suppress(CorralError):
            await departure.machine.cancel_migration()
    return {"name": name, "cancelled": True, "to": departure.to}
