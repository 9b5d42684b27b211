"""Snapshots: named points a VM can go back to, kept as a tree.

They are qcow2 *internal* snapshots, taken under one tag on every writable qcow2 disk of the
VM at once. A snapshot ``--memory`` also keeps the running state (RAM, devices, CPUs) in the
VM's ``vmstate.qcow2``, a qcow2 file no guest device sees, so even a VM whose root lives in
RAM (the tiny image) can be snapshotted and reverted. On a running VM QEMU's job commands do
the work (``snapshot-save`` / ``snapshot-load`` / ``snapshot-delete``); on a stopped VM
``qemu-img snapshot``.

The tree lives in the store: each snapshot's parent is the VM's current snapshot when it was
taken; reverting makes the reverted snapshot current; removing one hangs its children from its
parent.

Reverting to a memory snapshot puts the guest back at that moment (paused if it was paused);
reverting to a disk-only snapshot rolls the disks back and boots the guest from them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import TYPE_CHECKING, Any

from corral.domain.specs import check_name
from corral.domain.states import LIVE, State
from corral.engine.qemu.argv import VMSTATE_NODE, RunPaths
from corral.errors import (
    AgentError,
    AlreadyExists,
    CorralError,
    InvalidSpec,
    InvalidState,
    NotFound,
    Timeout,
)
from corral.host import qemu_img

if TYPE_CHECKING:
    from corral.engine.qemu.qmp import Monitor
    from corral.service.manager import Manager
    from corral.store.db import VMRecord

SNAPSHOT_STATES = (State.RUNNING, State.PAUSED, State.STOPPED, State.DEFINED)


def _disks(rec: VMRecord) -> list[tuple[str, str]]:
    """(node, path) of every disk a snapshot covers.

    :raises InvalidSpec: a writable raw disk cannot hold snapshots.
    """
    out = []
    for i, disk in enumerate(rec.spec.disks):
        if disk.readonly:
            continue
        if disk.format != "qcow2":
            raise InvalidSpec(f"disks.{i}", f"{disk.path} is raw; snapshots need qcow2 disks")
        out.append((disk.node(i), disk.path))
    return out


async def _job(monitor: Monitor, command: str, args: dict[str, Any],
               timeout: float = 300.0) -> None:
    """Run a QMP job command and wait for it to conclude.

    :raises CorralError: with QEMU's reason when the job fails.
    """
    job_id = f"crl-{uuid.uuid4().hex[:8]}"
    await monitor.execute(command, {"job-id": job_id, **args})
    deadline = asyncio.get_running_loop().time() + timeout
    delay = 0.002
    while True:
        jobs = await monitor.execute("query-jobs")
        job = next((j for j in jobs if j.get("id") == job_id), None)
        if job is None or job.get("status") == "concluded":
            break
        if asyncio.get_running_loop().time() > deadline:
            raise Timeout(f"{command} still runs after {timeout:g} s")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
    if job is not None:
        with contextlib.suppress(CorralError):
            await monitor.execute("job-dismiss", {"id": job_id})
        if job.get("error"):
            raise CorralError(f"{command} failed: {job['error']}")


def _find(m: Manager, name: str, snapshot: str) -> dict[str, Any]:
    for snap in m.db.list_snapshots(name):
        if snap["name"] == snapshot:
            return snap
    raise NotFound(f"VM '{name}' has no snapshot '{snapshot}'; see 'corral snapshot list "
                   f"{name}'")


def _refuse(name: str, op: str, state: State) -> None:
    if state not in SNAPSHOT_STATES:
        raise InvalidState(name, op, state.value, [s.value for s in SNAPSHOT_STATES])


async def create(m: Manager, name: str, snapshot: str, memory: bool = False) -> dict[str, Any]:
    """Take a snapshot of a running, paused or stopped VM.

    :raises InvalidSpec: a bad snapshot name, a raw disk, or ``memory`` on a stopped VM.
    :raises AlreadyExists: the VM has a snapshot of that name.
    """
    check_name(snapshot, "snapshot")
    async with m._lock(name):
        rec = m._get(name)
        _refuse(name, "snapshot", rec.state)
        if any(s["name"] == snapshot for s in m.db.list_snapshots(name)):
            raise AlreadyExists(f"VM '{name}' has a snapshot '{snapshot}' already")
        disks = _disks(rec)
        live = rec.state in LIVE
        if memory and not live:
            raise InvalidSpec("memory", f"'{name}' is {rec.state.value}: it has no running "
                                        "state to keep; snapshot it without --memory")
        if memory and not rec.spec.vmstate:
            raise InvalidSpec("memory", f"'{name}' was defined without a state file")
        if live:
            rt = m._runtime(rec)
            devices = [node for node, _ in disks] + ([VMSTATE_NODE] if rec.spec.vmstate else [])
            if devices:
                await _job(rt.monitor, "snapshot-save", {
                    "tag": snapshot, "vmstate": VMSTATE_NODE if rec.spec.vmstate
                    else devices[0], "devices": devices})
        else:
            for _, path in disks:
                await qemu_img.asnapshot(path, "create", snapshot,
                                         what="qemu-img could not take the snapshot")
        snap = {"vm": name, "name": snapshot, "parent": rec.current_snapshot,
                "created_at": time.time(), "memory": memory and live,
                "running": rec.state == State.RUNNING, "vm_state": rec.state.value}
        m.db.add_snapshot(snap)
        return snap


def tree(m: Manager, name: str) -> list[dict[str, Any]]:
    """The VM's snapshots, parents before children, each with its ``depth`` and whether it
    is ``current``."""
    rec = m._get(name)
    snaps = m.db.list_snapshots(name)
    children: dict[str | None, list[dict[str, Any]]] = {}
    names = {s["name"] for s in snaps}
    for s in snaps:
        children.setdefault(s["parent"] if s["parent"] in names else None, []).append(s)
    out: list[dict[str, Any]] = []

    def walk(parent: str | None, depth: int) -> None:
        for s in children.get(parent, []):
            out.append({**s, "depth": depth, "current": s["name"] == rec.current_snapshot})
            walk(s["name"], depth + 1)

    walk(None, 0)
    return out


async def revert(m: Manager, name: str, snapshot: str) -> dict[str, Any]:
    """Go back to ``snapshot``. Later changes are lost.

    :raises NotFound: no such snapshot.
    :raises InvalidState: the VM is saved, starting or otherwise busy.
    """
    async with m._lock(name):
        rec = m._get(name)
        _refuse(name, "revert", rec.state)
        snap = _find(m, name, snapshot)
        disks = _disks(rec)
        if snap["memory"] and rec.state in LIVE:
            rt = m._runtime(rec)
            devices = [node for node, _ in disks] + [VMSTATE_NODE]
            await _job(rt.monitor, "snapshot-load", {
                "tag": snapshot, "vmstate": VMSTATE_NODE, "devices": devices})
            await rt.monitor.execute("cont" if snap["running"] else "stop")
            target = State.RUNNING if snap["running"] else State.PAUSED
            if rec.state != target:
                m._set(rec, target)
            rec.current_snapshot = snapshot
            m.db.update_vm(rec, "snapshot_reverted", {"snapshot": snapshot})
            if snap["running"]:
                m._background(_fix_guest(m, name))
            return m._view(rec)
        was_live = rec.state in LIVE
        if was_live:
            rt = m._runtime(rec)
            rt.expected_exit = f"reverted to snapshot {snapshot}"
            await m._kill(rt)
            rec = m._get(name)
        for _, path in disks:
            await qemu_img.asnapshot(path, "apply", snapshot,
                                     what="qemu-img could not revert the snapshot")
        rec.current_snapshot = snapshot
        m.db.update_vm(rec, "snapshot_reverted", {"snapshot": snapshot})
        if snap["memory"]:  # a stopped VM comes back at the snapshot's running moment
            run = RunPaths(m.paths.run_dir(name))
            m._set(rec, State.STARTING)
            fresh = None
            try:
                # held before its first instruction, loaded through the job API, which (unlike
                # -loadvm) names the node that holds the RAM
                fresh = await m._spawn(rec, run, extra=["-S"])
                await _job(fresh.monitor, "snapshot-load", {
                    "tag": snapshot, "vmstate": VMSTATE_NODE,
                    "devices": [node for node, _ in disks] + [VMSTATE_NODE]})
                if snap["running"]:
                    await fresh.monitor.execute("cont")
            except BaseException:
                if fresh is not None:
                    fresh.expected_exit = "revert failed"
                    await m._kill(fresh)
                m._cleanup_run(run)
                rec = m._get(name)
                rec.state = State.STOPPED
                m.db.update_vm(rec, "start_failed", {})
                raise
            rec.started_at, rec.ready_at = time.time(), None
            m._set(rec, State.RUNNING if snap["running"] else State.PAUSED, "started")
            m._watch_ready(name, m._rt[name])
            if snap["running"]:
                m._background(_fix_guest(m, name))
            return m._view(m._get(name))
    if was_live:  # a disk-only snapshot of a VM that ran: boot it from the old disks
        return await m.start(name)
    return m._view(m._get(name))


async def _fix_guest(m: Manager, name: str) -> None:
    """After a memory revert the guest clock is the snapshot's: set it from the host."""
    rt = m._rt.get(name)
    if rt is None or rt.agent is None:
        return
    with contextlib.suppress(AgentError, Timeout):
        await rt.agent.execute("guest-set-time", {"time": time.time_ns()}, timeout=10)


async def delete(m: Manager, name: str, snapshot: str) -> None:
    """Remove a snapshot; its children keep their place under its parent.

    :raises NotFound: no such snapshot.
    """
    async with m._lock(name):
        rec = m._get(name)
        _refuse(name, "delete a snapshot of", rec.state)
        _find(m, name, snapshot)
        disks = _disks(rec)
        if rec.state in LIVE:
            rt = m._runtime(rec)
            devices = [node for node, _ in disks] + ([VMSTATE_NODE] if rec.spec.vmstate else [])
            if devices:
                await _job(rt.monitor, "snapshot-delete", {"tag": snapshot,
                                                           "devices": devices})
        else:
            paths = [p for _, p in disks] + ([rec.spec.vmstate] if rec.spec.vmstate else [])
            for path in paths:
                await qemu_img.asnapshot(path, "delete", snapshot, check=False)
        m.db.delete_snapshot(name, snapshot)
        from corral.service.warm import drop_templates

        drop_templates(m, name, snapshot)
