"""Save and restore a VM's whole state: memory, devices and CPU.

Save: pause the guest, have the engine stream its state into a file (atomically: a temporary
name, fsync, rename; a failure such as a full disk never leaves a partial state where a
restore would pick it up, and the VM then runs or stays paused as before), then end the
machine.

Restore: start a machine waiting for a state, feed it the file, continue if the guest was
running, and set the guest clock through the agent (it stood still while saved). A state the
engine cannot accept (another QEMU version or machine type) leaves the VM ``saved`` with its
file intact.
"""

from __future__ import annotations

import contextlib
import errno
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral.domain.states import State, check
from corral.engine.driver import LaunchOptions
from corral.errors import CorralError, DiskFull, InvalidSpec
from corral.service import adoption
from corral.service.runtime import READY_TIMEOUT, VMRuntime

if TYPE_CHECKING:
    from corral.service.scheduling import Scheduler
    from corral.store.db import VMRecord

SAVED_STATE = adoption.SAVED_STATE


async def save(rt: VMRuntime, name: str, file: str | None = None) -> dict[str, Any]:
    """Save a running or paused VM to a file and end its machine; the VM becomes ``saved``.

    :raises InvalidSpec: when ``file`` is relative (the caller's directory is not the
        daemon's: callers send an absolute path) or its directory does not exist.
    :raises InvalidState: unless the VM is running or paused.
    :raises InvalidSpec: ``file`` is relative or its directory does not exist.
    :raises DiskFull: the host's disk filled up; the VM is as it was.
    :raises CorralError: when the state cannot be written; the VM is as it was.
    """
    try:  # ~user of no user cannot be expanded
        path = Path(file).expanduser() if file is not None else None
    except RuntimeError as err:
        raise InvalidSpec("file", f"'{file}' names no home directory ({err})") from err
    if path is not None and not path.is_absolute():
        raise InvalidSpec("file", f"'{file}' is a relative path; give an absolute one")
    async with rt.lock(name):
        rec = rt.get(name)
        check(name, "save", rec.state)
        live = rt.machine(rec)
        target = path or rt.paths.vm_dir(name) / SAVED_STATE
        if not target.parent.is_dir():
            raise InvalidSpec("file", f"no directory '{target.parent}'")
        was_running = rec.state == State.RUNNING
        before = rec.state
        adoption.note(rt, name, tmp=str(target.with_name(f".{target.name}.tmp-")))
        rt.set_state(rec, State.SAVING)
        t0 = time.monotonic()
        try:
            if was_running:
                await live.machine.pause()
            size = await live.machine.save_state(target)
        except BaseException as err:
            if was_running:
                with contextlib.suppress(CorralError):
                    await live.machine.cont()
            rt.set_state(rec, before, "save_failed", error=str(err))
            adoption.clear(rt, name)
            if _disk_full(target):
                raise DiskFull(f"cannot save '{name}': the disk holding {target.parent} is "
                               "full; free some space and try again (the VM is as it was)"
                               ) from err
            raise
        rec.saved_state, rec.saved_running = str(target), was_running
        rt.record(rec, "state_written", file=str(target), bytes=size,
                  seconds=round(time.monotonic() - t0, 4))
        adoption.clear(rt, name)
        live.expected_exit, live.exit_state = "saved", State.SAVED
        await rt.kill(live)
        return rt.view(rt.get(name))


def _disk_full(target: Path) -> bool:
    import os

    try:
        st = os.statvfs(target.parent)
    except OSError as err:
        return err.errno == errno.ENOSPC
    return st.f_bavail * st.f_frsize < (1 << 20)


async def restore(rt: VMRuntime, sched: Scheduler, name: str, wait: bool = False,
                  timeout: float = READY_TIMEOUT, queue: bool = True) -> dict[str, Any]:
    """Bring a saved VM back exactly where it was, through admission like any start: on a
    full host it is ``queued`` and restored when capacity frees (with ``wait``, this
    returns once it is ready).

    :raises InvalidState: unless the VM is saved.
    :raises NoCapacity: it does not fit now and ``queue`` is false.
    :raises CorralError: when the engine cannot accept the state; the VM stays saved and its
        file is kept.
    """
    t0 = time.monotonic()
    async with rt.lock(name):
        rec = rt.get(name)
        check(name, "restore", rec.state)
        _source(rec)
        if sched.admit(rec, queue):
            await load(rt, rec)
    if wait:
        await rt.wait_admitted(name, timeout)
        await rt.wait_ready(name, max(0.1, timeout - (time.monotonic() - t0)))
    return rt.view(rt.get(name))


def _source(rec: VMRecord) -> Path:
    """:raises CorralError: the VM's saved state is gone."""
    source = Path(rec.saved_state or "")
    if not rec.saved_state or not source.is_file():
        raise CorralError(f"the saved state of '{rec.name}' is missing ({source}); "
                          f"'corral rm {rec.name}' or define it again")
    return source


async def load(rt: VMRuntime, rec: VMRecord) -> None:
    """Restore an admitted saved VM (its capacity is reserved; the caller holds its lock).
    On failure the VM is ``saved`` again, its file kept, its reservation freed."""
    name = rec.name
    try:
        async with rt.rollback(rec, State.SAVED, "restore_failed"):
            source = _source(rec)
            rt.set_state(rec, State.RESTORING)
            live = await rt.spawn(rec, LaunchOptions(incoming=True))
            live.expected_exit, live.exit_state = "restore failed", State.SAVED
            await live.machine.load_state(source)
            if rec.saved_running:
                await live.machine.cont()
    except CorralError as err:
        raise CorralError(f"cannot restore '{name}' from {rec.saved_state}: {err.message}; "
                          "the saved state is kept") from err
    live.expected_exit, live.exit_state = None, State.STOPPED
    target = State.RUNNING if rec.saved_running else State.PAUSED
    managed = source.parent == rt.paths.vm_dir(name)
    rec.saved_state, rec.saved_running = None, None
    rec.ready_at, rec.exit_reason = None, None
    rt.set_state(rec, target, "restored")
    if managed:
        source.unlink(missing_ok=True)  # a managed save is used up; a user's file is kept
    rt.watch_ready(name, live, on_ready=adoption.set_clock)
