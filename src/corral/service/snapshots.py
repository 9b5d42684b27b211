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

import contextlib
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral.domain.specs import check_name
from corral.domain.states import LIVE, State
from corral.engine.driver import LaunchOptions
from corral.engine.qemu.argv import VMSTATE_NODE
from corral.errors import (
    AgentError,
    AlreadyExists,
    InvalidSpec,
    InvalidState,
    NotFound,
    Timeout,
)
from corral.host import qemu_img
from corral.service import adoption
from corral.service.runtime import VMRuntime

if TYPE_CHECKING:
    from corral.service.scheduling import Scheduler
    from corral.store.db import VMRecord

Start = Callable[[str], Awaitable[dict[str, Any]]]
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


def _find(rt: VMRuntime, name: str, snapshot: str) -> dict[str, Any]:
    for snap in rt.db.list_snapshots(name):
        if snap["name"] == snapshot:
            return snap
    raise NotFound(f"VM '{name}' has no snapshot '{snapshot}'; see 'corral snapshot list "
                   f"{name}'")


def _refuse(name: str, op: str, state: State) -> None:
    if state not in SNAPSHOT_STATES:
        raise InvalidState(name, op, state.value, [s.value for s in SNAPSHOT_STATES])


async def create(rt: VMRuntime, name: str, snapshot: str, memory: bool = False,
                 template: bool = False) -> dict[str, Any]:
    """Take a snapshot of a running, paused or stopped VM. ``template`` (a memory snapshot)
    is checked here and made by the caller (:func:`.warm.ensure_template`).

    :raises InvalidSpec: a bad snapshot name, a raw disk, ``memory`` on a stopped VM, or
        ``template`` without ``memory``.
    :raises AlreadyExists: the VM has a snapshot of that name.
    """
    check_name(snapshot, "snapshot")
    async with rt.lock(name):
        rec = rt.get(name)
        _refuse(name, "snapshot", rec.state)
        if any(s["name"] == snapshot for s in rt.db.list_snapshots(name)):
            raise AlreadyExists(f"VM '{name}' has a snapshot '{snapshot}' already")
        disks = _disks(rec)
        live = rec.state in LIVE
        if memory and not live:
            raise InvalidSpec("memory", f"'{name}' is {rec.state.value}: it has no running "
                                        "state to keep; snapshot it without --memory")
        if memory and not rec.spec.vmstate:
            raise InvalidSpec("memory", f"'{name}' was defined without a state file")
        if template and not memory:
            raise InvalidSpec("template", "a warm-start template needs the running state; "
                                          "add --memory")
        files = [p for _, p in disks] + ([rec.spec.vmstate] if rec.spec.vmstate else [])
        adoption.note(rt, name, snapshot=snapshot, files=files)
        if live:
            machine = rt.machine(rec).machine
            devices = [node for node, _ in disks] + ([VMSTATE_NODE] if rec.spec.vmstate else [])
            if devices:
                await machine.snapshot_save(snapshot, VMSTATE_NODE if rec.spec.vmstate
                                            else devices[0], devices)
        else:
            for _, path in disks:
                await qemu_img.asnapshot(path, "create", snapshot,
                                         what="qemu-img could not take the snapshot")
        snap = {"vm": name, "name": snapshot, "parent": rec.current_snapshot,
                "created_at": time.time(), "memory": memory and live,
                "running": rec.state == State.RUNNING, "vm_state": rec.state.value}
        rt.db.add_snapshot(snap)
        adoption.clear(rt, name)
        return {**snap, "template": template_dir(rt, name, snapshot).is_dir()}


def tree(rt: VMRuntime, name: str) -> list[dict[str, Any]]:
    """The VM's snapshots, parents before children, each with its ``depth`` and whether it
    is ``current``."""
    rec = rt.get(name)
    snaps = rt.db.list_snapshots(name)
    children: dict[str | None, list[dict[str, Any]]] = {}
    names = {s["name"] for s in snaps}
    for s in snaps:
        children.setdefault(s["parent"] if s["parent"] in names else None, []).append(s)
    out: list[dict[str, Any]] = []

    def walk(parent: str | None, depth: int) -> None:
        for s in children.get(parent, []):
            out.append({**s, "depth": depth, "current": s["name"] == rec.current_snapshot,
                        "template": template_dir(rt, name, s["name"]).is_dir()})
            walk(s["name"], depth + 1)

    walk(None, 0)
    return out


async def revert(rt: VMRuntime, sched: Scheduler, start: Start, name: str, snapshot: str
                 ) -> dict[str, Any]:
    """Go back to ``snapshot``. Later changes are lost. ``start`` boots a VM whose disks
    were rolled back (the lifecycle's start, through admission).

    :raises NotFound: no such snapshot.
    :raises InvalidState: the VM is saved, starting or otherwise busy.
    """
    async with rt.lock(name):
        rec = rt.get(name)
        _refuse(name, "revert", rec.state)
        snap = _find(rt, name, snapshot)
        disks = _disks(rec)
        devices = [node for node, _ in disks] + [VMSTATE_NODE]
        if snap["memory"] and rec.state in LIVE:
            machine = rt.machine(rec).machine
            await machine.snapshot_load(snapshot, VMSTATE_NODE, devices)
            await machine.guest_reset_channel()  # the agent is back where it was: resync
            await (machine.cont() if snap["running"] else machine.pause())
            target = State.RUNNING if snap["running"] else State.PAUSED
            if rec.state != target:
                rt.set_state(rec, target)
            rec.current_snapshot = snapshot
            rt.record(rec, "snapshot_reverted", snapshot=snapshot)
            if snap["running"]:
                rt.background(_fix_guest(rt, name))
            return rt.view(rec)
        was_live = rec.state in LIVE
        if was_live:
            live = rt.machine(rec)
            live.expected_exit = f"reverted to snapshot {snapshot}"
            await rt.kill(live)
            rec = rt.get(name)
        for _, path in disks:
            await qemu_img.asnapshot(path, "apply", snapshot,
                                     what="qemu-img could not revert the snapshot")
        rec.current_snapshot = snapshot
        rt.record(rec, "snapshot_reverted", snapshot=snapshot)
        if snap["memory"]:  # a stopped VM comes back at the snapshot's running moment
            await _start_at(rt, sched, rec, snapshot, devices, bool(snap["running"]))
            return rt.view(rt.get(name))
    if was_live:  # a disk-only snapshot of a VM that ran: boot it from the old disks
        return await start(name)
    return rt.view(rt.get(name))


async def _start_at(rt: VMRuntime, sched: Scheduler, rec: VMRecord, snapshot: str,
                    devices: list[str], running: bool) -> None:
    """Start a stopped VM held before its first instruction and load the memory snapshot
    through the job API (which, unlike ``-loadvm``, names the node that holds the RAM)."""
    before = rec.state
    sched.reserve_now(rec)
    async with rt.rollback(rec, before):
        rt.set_state(rec, State.STARTING)
        live = await rt.spawn(rec, LaunchOptions(hold=True))
        await live.machine.snapshot_load(snapshot, VMSTATE_NODE, devices)
        if running:
            await live.machine.cont()
    rec.started_at, rec.ready_at = time.time(), None
    rt.set_state(rec, State.RUNNING if running else State.PAUSED, "started")
    rt.watch_ready(rec.name, live)
    if running:
        rt.background(_fix_guest(rt, rec.name))


async def _fix_guest(rt: VMRuntime, name: str) -> None:
    """After a memory revert the guest clock is the snapshot's: set it from the host."""
    live = rt.live.get(name)
    if live is None or not live.machine.has_agent:
        return
    with contextlib.suppress(AgentError, Timeout):
        await live.machine.guest_set_time(time.time_ns(), timeout=10)


async def delete(rt: VMRuntime, name: str, snapshot: str) -> None:
    """Remove a snapshot; its children keep their place under its parent.

    :raises NotFound: no such snapshot.
    """
    async with rt.lock(name):
        rec = rt.get(name)
        _refuse(name, "delete a snapshot of", rec.state)
        _find(rt, name, snapshot)
        disks = _disks(rec)
        # a template being made (in the background) is finished first, then dropped
        async with rt.lock(template_lock(name, snapshot)):
            if rec.state in LIVE:
                machine = rt.machine(rec).machine
                devices = [node for node, _ in disks] + (
                    [VMSTATE_NODE] if rec.spec.vmstate else [])
                if devices:
                    await machine.snapshot_delete(snapshot, devices)
            else:
                paths = [p for _, p in disks] + ([rec.spec.vmstate] if rec.spec.vmstate else [])
                for path in paths:
                    await qemu_img.asnapshot(path, "delete", snapshot, check=False)
            rt.db.delete_snapshot(name, snapshot)
            drop_templates(rt, name, snapshot)


async def templates_settled(rt: VMRuntime, name: str) -> None:
    """Wait for the templates of ``name``'s snapshots being made (before its files go)."""
    for snap in rt.db.list_snapshots(name):
        async with rt.lock(template_lock(name, snap["name"])):
            pass


def template_dir(rt: VMRuntime, vm: str, snapshot: str) -> Path:
    """Where the warm-start template of a snapshot is kept (made on first use by
    :mod:`.warm`, removed with the snapshot)."""
    return rt.paths.vm_dir(vm) / "templates" / snapshot


def template_lock(vm: str, snapshot: str) -> str:
    """The runtime lock under which a snapshot's template is made or removed (no VM name
    holds a '/')."""
    return f"template/{vm}/{snapshot}"


def drop_templates(rt: VMRuntime, vm: str, snapshot: str) -> None:
    """Forget the template of a snapshot that is going away."""
    shutil.rmtree(template_dir(rt, vm, snapshot), ignore_errors=True)
