"""What a starting daemon does before it serves: take up every VM whose machine is still
alive, settle the ones an earlier daemon left half-way through an operation, and remove what
no record owns in its own home.

A daemon can die at any moment inside an operation. Each long operation therefore writes a
*pending* note in the store before it changes anything outside it (a state file being
written, a snapshot being taken) and clears it when it commits; adoption finishes or undoes
whatever a note still names:

* ``restoring`` with a machine still waiting for its state (``inmigrate``), or with none: the
  machine is ended and the VM is ``saved`` again, its file intact. With the state loaded, the
  restore is finished (a guest that ran when it was saved is continued) and the used-up
  managed state file is removed.
* ``saving`` whose record already names the written state: the save is finished (the machine
  is ended; the VM is ``saved``). Before that the machine is kept, the VM is what QEMU says
  (``paused``, or ``running`` when the save never paused it), and the partial file goes.
* a snapshot being taken: a tag the store does not know is removed from the VM's disks, so
  the name can be used again and the RAM it held is freed.
* ``starting`` from a warm-start template that never got its state: ended, back to
  ``defined``.
* directories under ``vms/`` that no VM owns (a create cut short), temporary files of saves,
  imports, templates and the blank state file, a managed ``saved.state`` its VM's record does
  not name (renamed into place by a save, or used up by a restore, that died before the
  record said so), and run directories of VMs that are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from corral.domain.states import LIVE, State, allowed, from_qmp_status
from corral.engine.driver import Machine
from corral.errors import CorralError
from corral.host import cgroups, qemu_img
from corral.service.runtime import Live, VMRuntime
from corral.store.db import VMRecord

log = logging.getLogger(__name__)
#: run states of a QEMU that may be sending a live migration (held at its switch, or not)
MIGRATING = ("running", "finish-migrate")
PENDING = "pending/"
SAVED_STATE = "saved.state"  # a managed save's file in the VM's directory
ADOPT_AT_ONCE = 32  # VMs taken up in parallel (each holds a few descriptors meanwhile)


async def set_clock(_name: str, machine: Machine) -> None:
    """A guest back from a saved state: its clock stood still, so set it from the host's."""
    if machine.has_agent:
        with contextlib.suppress(CorralError):
            await machine.guest_set_time(time.time_ns(), timeout=5)


def note(rt: VMRuntime, vm: str, **what: Any) -> None:
    """Write a pending note for ``vm`` (before an operation changes files or disks)."""
    rt.db.put_doc(PENDING + vm, what)


def clear(rt: VMRuntime, vm: str) -> None:
    """The operation committed (or was undone): the note goes."""
    rt.db.put_doc(PENDING + vm, None)


async def adopt_all(rt: VMRuntime) -> None:
    """Take up or settle every VM in the store, all at once (each VM's QMP connection and
    status query wait on its own QEMU; the store's pending notes are read once, and what the
    VMs taken up as they were say is written in one transaction, on disk before this
    returns), then sweep the home."""
    limit = asyncio.Semaphore(ADOPT_AT_ONCE)
    notes = rt.db.list_docs(PENDING)

    async def one(rec: VMRecord) -> None:
        async with limit:
            try:
                await _adopt(rt, rec)
            except CorralError as err:
                log.warning("cannot adopt %s: %s", rec.name, err)
            await _settle_note(rt, rec, notes.get(PENDING + rec.name))

    with rt.db.together():  # what each VM taken up as it was says: one commit for all
        await asyncio.gather(*(one(rec) for rec in rt.db.list_vms()))
    rt.db.flush()
    _sweep(rt)


async def _adopt(rt: VMRuntime, rec: VMRecord) -> None:
    run_dir = rt.run_dir(rec.name)
    machine = await rt.driver.adopt(rec.spec, run_dir, rec.pid, rec.pid_start,
                                    rt.event_handler(rec.name))
    if machine is None:
        _gone(rt, rec)
        rt.driver.cleanup(run_dir)
        rt.hooks.released(rec.name)  # its cgroups, which no exit will free now
        return
    status = await machine.status()
    if status == "inmigrate":  # a restore or warm start that never got its state
        await _end(rt, Live(machine))
        back = State.SAVED if rec.state == State.RESTORING else (
            State.DEFINED if rec.started_at is None else State.STOPPED)
        rec.pid = rec.pid_start = None
        rec.exit_reason = "the daemon stopped while it was loading the VM's state"
        _force(rt, rec, back, "adopted")
        return
    if rec.state == State.SAVING and rec.saved_state:  # the state was written: finish
        await _end(rt, Live(machine))
        rec.pid = rec.pid_start = None
        rec.ready_at, rec.exit_reason = None, "saved"
        _force(rt, rec, State.SAVED, "adopted")
        return
    if rec.state == State.SAVING:  # a save cut short: its stream must not end it later
        with contextlib.suppress(CorralError):
            await machine.cancel_save()
        status = await machine.status()
    elif status in MIGRATING:  # a live migration its daemon no longer follows: stopped, so
        with contextlib.suppress(CorralError):  # the guest runs on here (see clustermigrate)
            await machine.cancel_migration()
        status = await machine.status()
    live = rt.attach(rec, machine)
    state = from_qmp_status(status)
    if state not in (State.RUNNING, State.PAUSED):
        state = State.PAUSED  # a save cut short: the guest is held; resume it
    restored = rec.state == State.RESTORING and bool(rec.saved_state)
    if restored:  # the state was loaded
        if rec.saved_running and status == "paused":
            await machine.cont()  # the restore stopped short of its last step
            state = State.RUNNING
        _drop_managed_state(rt, rec)
        rec.saved_state = rec.saved_running = None
    # written behind (the loop goes on taking up the others): what QEMU says, which the
    # next daemon would read again from it
    _force(rt, rec, state, "adopted", wait=False, pid=machine.pid)
    if rec.ready_at is not None and not restored:
        live.ready.set()
    else:  # a guest back from a saved state also gets the host's clock
        rt.watch_ready(rec.name, live, on_ready=set_clock if restored else None)


def _drop_managed_state(rt: VMRuntime, rec: VMRecord) -> None:
    """A managed state file is used up by its restore (a user's own file is kept)."""
    if rec.saved_state and Path(rec.saved_state).parent == rt.paths.vm_dir(rec.name):
        Path(rec.saved_state).unlink(missing_ok=True)


def _gone(rt: VMRuntime, rec: VMRecord) -> None:
    """The VM's machine is gone: say how it ended."""
    if rec.state not in LIVE:
        return
    rec.pid = rec.pid_start = None
    rec.ready_at = None
    kept = rec.saved_state and Path(rec.saved_state).is_file()
    if rec.state in (State.RESTORING, State.SAVING) and kept:
        rec.exit_reason = ("saved" if rec.state == State.SAVING else
                           "the daemon stopped while restoring; the saved state is kept")
        _force(rt, rec, State.SAVED)
        return
    stopping = rec.state in (State.STOPPING, State.STARTING)
    rec.exit_reason = ("stopped while the daemon was down" if stopping
                       else "QEMU was gone when the daemon started")
    _force(rt, rec, State.STOPPED if stopping else State.CRASHED)


def _force(rt: VMRuntime, rec: VMRecord, state: State, kind: str | None = None,
           wait: bool = True, **detail: Any) -> None:
    """Settle a VM after a restart: through the table when it allows the move, else (a
    state the table cannot reach from an interrupted one) recorded as adoption found it.
    ``wait=False``: see :meth:`~corral.store.db.Store.update_vm`."""
    if rec.state == state or allowed(rec.state, state):
        rt.set_state(rec, state, kind, wait=wait, **detail)
    else:
        rec.state = state
        rt.record(rec, kind or state.value, **detail)


async def _end(rt: VMRuntime, live: Live) -> None:
    live.machine.watch_exit(lambda _status: None)  # reaped; nobody else holds it
    await rt.kill(live)
    await live.machine.close()
    rt.driver.cleanup(rt.run_dir(live.machine.name))


async def _settle_note(rt: VMRuntime, rec: VMRecord, pending: Any) -> None:
    """Finish or undo what the VM's pending note (read before adoption) names."""
    if not pending:
        return
    tmp = pending.get("tmp")
    if tmp:  # a save that never committed
        for path in Path(tmp).parent.glob(Path(tmp).name + "*"):
            path.unlink(missing_ok=True)
    tag = pending.get("snapshot")
    if tag and not any(s["name"] == tag for s in rt.db.list_snapshots(rec.name)):
        await _drop_tag(rt, rec, str(tag), [str(p) for p in pending.get("files", [])])
    clear(rt, rec.name)


async def _drop_tag(rt: VMRuntime, rec: VMRecord, tag: str, files: list[str]) -> None:
    """Remove a snapshot tag the store never heard of from the VM's disks."""
    live = rt.live.get(rec.name)
    if live is not None:
        with contextlib.suppress(CorralError):
            await live.machine.snapshot_delete(tag, list(pending_nodes(rec)))
        return
    for path in files:
        with contextlib.suppress(CorralError):
            await qemu_img.asnapshot(path, "delete", tag, check=False)


def pending_nodes(rec: VMRecord) -> list[str]:
    """The nodes a snapshot of ``rec`` covers (its writable disks and the state file)."""
    from corral.engine.qemu.argv import VMSTATE_NODE

    nodes = [d.node(i) for i, d in enumerate(rec.spec.disks)
             if not d.readonly and d.format == "qcow2"]
    return nodes + ([VMSTATE_NODE] if rec.spec.vmstate else [])


def _sweep(rt: VMRuntime) -> None:
    """Remove what no record owns, in this daemon's own home only."""
    recs = {r.name: r for r in rt.db.list_vms()}
    names = set(recs)
    for blank in rt.paths.home.glob(".blank-vmstate.*.qcow2"):  # a first create cut short
        blank.unlink(missing_ok=True)
    vms_dir = rt.paths.home / "vms"
    if vms_dir.is_dir():
        for child in vms_dir.iterdir():
            if child.name.startswith(".import-") or (child.is_dir() and
                                                      child.name not in names):
                shutil.rmtree(child, ignore_errors=True)
                continue
            for tmp in child.glob(".*.tmp-*"):
                tmp.unlink(missing_ok=True)
            state = child / SAVED_STATE  # written by a save, or used up by a restore,
            rec = recs.get(child.name)  # that stopped before its record said so
            if rec is not None and rec.saved_state != str(state):
                state.unlink(missing_ok=True)
            templates = child / "templates"
            if templates.is_dir():
                for work in templates.glob(".*.tmp-*"):
                    shutil.rmtree(work, ignore_errors=True)
    _end_strays(rt, names)
    run = rt.paths.run
    if run.is_dir():  # run directories of VMs (a pidfile or sockets) that are gone
        for child in run.iterdir():
            ours = child.name.startswith(".tmpl-") or (child / "qemu.pid").exists() or (
                child / "qmp.sock").exists()
            if child.is_dir() and ours and child.name not in names:
                rt.driver.cleanup(child, orphan=True)  # a QEMU waiting for a migration
                shutil.rmtree(child, ignore_errors=True)


def _end_strays(rt: VMRuntime, names: set[str]) -> None:
    """End the QEMUs in this home's cgroups that no record owns (in the group of a VM with no
    record, or beside the QEMU a VM's record names), and remove the groups of VMs with no
    record: a home removed while its VMs ran leaves them running, holding their taps (a VM
    made again under the same name could not open its tap, or ran twice)."""
    stray = []
    for vm, groups in cgroups.groups_of(rt.paths.tag).items():
        live = rt.live.get(vm)
        own = live.machine.pid if live is not None else None
        for pid in sorted({pid for g in groups for pid in cgroups.members(g)} - {own}):
            if rt.driver.end_stray(pid):
                log.warning("ended QEMU %d in the cgroups of VM '%s': no record of this "
                            "daemon's home owns it (the home was removed while it ran?)", pid, vm)
        if vm not in names:
            stray += groups
    deadline = time.monotonic() + 5.0  # a killed QEMU is gone in milliseconds
    while any(cgroups.members(g) for g in stray) and time.monotonic() < deadline:
        time.sleep(0.02)
    for group in stray:
        cgroups.remove_group(group)
