"""Save and restore a VM's whole state: memory, devices and CPU, through QEMU migration.

Save: pause the guest, stream its state into a file descriptor Corral opened (``getfd`` +
``migrate fd:``; QEMU opens nothing and no shell runs), wait for ``completed``, fsync, rename
into place, then end QEMU. The file is written under a temporary name beside its target, so a
failure (a full disk) never leaves a partial state where a restore would pick it up; the VM
then runs (or stays paused) as before.

Restore: start QEMU with the same command line plus ``-incoming defer``, feed it the file
(``migrate-incoming fd:``), ``cont`` if the guest was running, and set the guest clock through
the agent (it stood still while saved). A state QEMU cannot accept (another QEMU version or
machine type) leaves the VM ``saved`` with its file intact.

QEMU 7.2 caps migration at 128 MiB/s even for a stopped VM; Corral lifts the cap.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral.domain.states import State, check
from corral.engine.qemu import argv as qargv
from corral.errors import AgentError, CorralError, InvalidSpec, MonitorError, Timeout

if TYPE_CHECKING:
    from corral.engine.qemu.qmp import Monitor
    from corral.service.manager import Manager, Runtime

UNLIMITED = 1 << 40  # bytes per second: no cap


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def write_state(monitor: Monitor, target: Path) -> int:
    """Stream the (stopped) VM's state into ``target`` atomically; returns its size.

    :raises CorralError: when the stream fails (no partial file is left).
    """
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            await monitor.send_fd(fd, "corral-state")
        finally:
            os.close(fd)
        await monitor.execute("migrate-set-parameters", {"max-bandwidth": UNLIMITED})
        await monitor.execute("migrate", {"uri": "fd:corral-state"})
        await monitor.wait_migration()
        fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        size = tmp.stat().st_size
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        return size
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, MonitorError):
            raise CorralError(f"cannot write the state to {target}: {err.message}") from err
        raise


async def read_state(monitor: Monitor, source: Path) -> None:
    """Feed ``source`` to a QEMU started with ``-incoming defer`` and wait until it is in.

    :raises MonitorError: when QEMU refuses the state.
    """
    fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        await monitor.send_fd(fd, "corral-state")
    finally:
        os.close(fd)
    await monitor.execute("migrate-incoming", {"uri": "fd:corral-state"})
    await monitor.wait_migration()


async def save(m: Manager, name: str, file: str | None = None) -> dict[str, Any]:
    """Save a running or paused VM to a file and end its QEMU; the VM becomes ``saved``.

    :raises InvalidSpec: when ``file`` is relative (the caller's directory is not the
        daemon's: callers send an absolute path) or its directory does not exist.
    :raises InvalidState: unless the VM is running or paused.
    :raises CorralError: when the state cannot be written; the VM is as it was.
    """
    if file and not Path(file).is_absolute():
        raise InvalidSpec("file", f"'{file}' is a relative path; give an absolute one")
    async with m._lock(name):
        rec = m._get(name)
        check(name, "save", rec.state)
        rt = m._runtime(rec)
        target = Path(file) if file else m.paths.vm_dir(name) / "saved.state"
        if not target.parent.is_dir():
            raise InvalidSpec("file", f"no directory '{target.parent}'")
        was_running = rec.state == State.RUNNING
        before = rec.state
        m._set(rec, State.SAVING)
        t0 = time.monotonic()
        try:
            if was_running:
                await rt.monitor.execute("stop")
            size = await write_state(rt.monitor, target)
        except BaseException as err:
            if was_running:
                with contextlib.suppress(CorralError):
                    await rt.monitor.execute("cont")
            rec.state = before
            m.db.update_vm(rec, "save_failed", {"error": str(err)})
            raise
        rec.saved_state, rec.saved_running = str(target), was_running
        m.db.update_vm(rec, "state_written", {"file": str(target), "bytes": size,
                                              "seconds": round(time.monotonic() - t0, 4)})
        rt.expected_exit, rt.exit_state = "saved", State.SAVED
        await m._kill(rt)
        return m._view(m._get(name))


async def restore(m: Manager, name: str, wait: bool = False,
                  timeout: float = 120.0) -> dict[str, Any]:
    """Bring a saved VM back exactly where it was.

    :raises InvalidState: unless the VM is saved.
    :raises CorralError: when QEMU cannot accept the state; the VM stays saved, file kept.
    """
    async with m._lock(name):
        rec = m._get(name)
        check(name, "restore", rec.state)
        source = Path(rec.saved_state or "")
        if not rec.saved_state or not source.is_file():
            raise CorralError(f"the saved state of '{name}' is missing ({source}); "
                              f"'corral destroy {name}' or define it again")
        m.sched.reserve_now(rec)
        m._set(rec, State.RESTORING)
        run = qargv.RunPaths(m.paths.run_dir(name))
        rt = None
        try:
            rt = await m._spawn(rec, run, incoming=True)
            rt.expected_exit, rt.exit_state = "restore failed", State.SAVED
            await read_state(rt.monitor, source)
            if rec.saved_running:
                await rt.monitor.execute("cont")
        except BaseException as err:
            if rt is not None:
                await m._kill(rt)
            m._cleanup_run(run)
            m.sched.release(name)
            rec = m._get(name)
            rec.state, rec.pid, rec.pid_start = State.SAVED, None, None
            rec.exit_reason = f"restore failed: {err}"
            m.db.update_vm(rec, "restore_failed", {"error": str(err)})
            if isinstance(err, CorralError):
                raise CorralError(f"cannot restore '{name}' from {source}: {err.message}; "
                                  "the saved state is kept") from err
            raise
        rt.expected_exit, rt.exit_state = None, State.STOPPED
        if source.parent == m.paths.vm_dir(name):
            source.unlink(missing_ok=True)  # a managed save is used up; a user's file is kept
        target = State.RUNNING if rec.saved_running else State.PAUSED
        rec.saved_state, rec.saved_running = None, None
        rec.ready_at, rec.exit_reason = None, None
        m._set(rec, target, "restored")
        m._watch_ready(name, rt, on_ready=_set_clock)
    if wait:
        await m.wait_ready(name, timeout)
    return m._view(m._get(name))


async def _set_clock(m: Manager, name: str, rt: Runtime) -> None:
    """The guest clock stood still while saved: set it from the host's."""
    if rt.agent is not None:
        with contextlib.suppress(AgentError, Timeout):
            await rt.agent.execute("guest-set-time", {"time": time.time_ns()}, timeout=5)
