"""Launch, adopt, watch and kill QEMU processes.

Each VM is a QEMU started by :mod:`.spawn` in its own session, confined, and orphaned at once
by a short-lived intermediate; the VM lives on when the daemon stops. The daemon makes itself
a *child subreaper*, so the QEMUs it starts are its children and it reaps them the moment they
exit; QEMUs adopted after a daemon restart are not its children, and a zombie counts as exited
for them.

Exits are seen through a pidfd (``os.pidfd_open`` + ``loop.add_reader``): it turns readable
when the process exits, zombie or not, and it cannot be fooled by pid reuse. Identity on
adoption is the pid plus its start time (``/proc/PID/stat`` field 22) plus the monitor socket
the daemon made for it among its open files.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from corral.engine.driver import ExitStatus
from corral.engine.qemu.argv import RunPaths
from corral.engine.qemu.spawn import Jail, spawn
from corral.errors import LaunchFailed

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot, or None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    if fields[0] in ("Z", "X"):  # fields[0] is the state, field 3 of stat
        return None
    return int(fields[19])


def zombie_status(pid: int) -> int | None:
    """The exit status of a zombie that is not our child, read before its parent reaps it
    (``/proc/PID/stat`` field 52, in ``waitpid`` encoding); negative for a signal."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    if len(fields) < 50 or fields[0] != "Z":
        return None
    status = int(fields[49])
    return -(status & 0x7F) if status & 0x7F else (status >> 8) & 0xFF


def end_orphan(run: RunPaths) -> int | None:
    """Kill the QEMU a run directory's pidfile names if it is still there, that is, if it
    still holds the directory's monitor socket. That is a machine no record owns: a daemon
    that died while it waited for an incoming migration. Returns the pid ended, or None."""
    try:
        pid = int(run.pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    if start_time(pid) is None or not holds_socket(pid, run.qmp):
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return pid


def end_stray(pid: int) -> bool:
    """Kill ``pid`` if it is a QEMU (its program is ``qemu-system-*``); whether it was."""
    try:
        program = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
    except OSError:
        return False
    if not os.path.basename(program).startswith(b"qemu-system-"):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return True


Exit = ExitStatus  # how a QEMU ended


class Process:
    """A live QEMU process, known by pid and start time, watched through a pidfd."""

    def __init__(self, pid: int, started: int) -> None:
        self.pid = pid
        self.started = started
        self._pidfd: int | None = None
        self.exit: Exit | None = None
        self._exited = asyncio.Event()

    @classmethod
    def adopt(cls, pid: int, started: int | None, monitor: Path) -> Process | None:
        """The process ``pid`` if it is still the QEMU we started (same start time, and it
        holds the ``monitor`` socket the daemon made for it), else None."""
        now = start_time(pid)
        if now is None or (started is not None and now != started):
            return None
        if not holds_socket(pid, monitor):
            return None
        return cls(pid, now)

    def watch(self, on_exit: Callable[[Exit], None]) -> None:
        """Call ``on_exit`` once, from the event loop, when the process exits."""
        loop = asyncio.get_running_loop()
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            self._finish(on_exit)
            return

        def ready() -> None:
            loop.remove_reader(self._pidfd)  # type: ignore[arg-type]
            self._finish(on_exit)

        loop.add_reader(self._pidfd, ready)

    def _reap(self) -> Exit:
        if self._pidfd is None:
            return Exit(None)
        try:
            res = os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            return Exit(zombie_status(self.pid))
        if res is None:
            return Exit(None)
        code = res.si_status
        if res.si_code in (os.CLD_KILLED, os.CLD_DUMPED):
            code = -code
        return Exit(code)

    def _finish(self, on_exit: Callable[[Exit], None]) -> None:
        if self.exit is not None:
            return
        self.exit = self._reap()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        self._exited.set()
        on_exit(self.exit)

    @property
    def alive(self) -> bool:
        return self.exit is None

    def signal(self, sig: int) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, sig)

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait for the exit; True if it happened within ``timeout``."""
        try:
            await asyncio.wait_for(self._exited.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def unwatch(self) -> None:
        """Stop watching (the daemon is shutting down; the VM lives on)."""
        if self._pidfd is not None:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None


_BOUND: dict[str, set[str]] = {}  # unix socket path -> socket inodes, as last read


def _bound() -> dict[str, set[str]]:
    """Every bound unix socket of the host: its path and its socket inodes."""
    table: dict[str, set[str]] = {}
    with open("/proc/net/unix") as lines:
        for line in lines:
            cols = line.split()
            if len(cols) >= 8:
                table.setdefault(cols[7], set()).add(f"socket:[{cols[6]}]")
    return table


def holds_socket(pid: int, path: Path) -> bool:
    """Whether process ``pid`` holds a unix socket bound to ``path`` (its monitor's): the
    identity of a QEMU to adopt, since the daemon made that socket and passed it only to the
    QEMU it started.

    ``/proc/net/unix`` (slow to make on a busy host) is read once for the QEMUs adopted
    together: a socket it listed counts only when the process holds it now, and any other
    answer is given by reading it again."""
    global _BOUND
    target = str(path)
    held: set[str] = set()
    known = _BOUND.get(target, set())
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                held.add(link := os.readlink(f"/proc/{pid}/fd/{fd}"))
                if link in known:
                    return True
        _BOUND = _bound()
    except OSError:
        return False
    return bool(held & _BOUND.get(target, set()))


def log_tail(log: Path, limit: int = 4000) -> str:
    try:
        return log.read_text(errors="replace")[-limit:].strip()
    except OSError:
        return ""


async def launch(argv: list[str], run: RunPaths, pass_fds: list[int], jail: Jail) -> Process:
    """Start QEMU (confined by ``jail``) and return its process.

    :raises LaunchFailed: with the exit code, the full command line and QEMU's own words
        when it does not come up.
    """
    try:
        pid = await spawn(argv, pass_fds, run.log, run.pidfile, jail)
    except FileNotFoundError as err:
        raise LaunchFailed(argv, 127, f"{argv[0]} is not installed (apt-get install "
                                      "qemu-system-x86)", what="QEMU would not start") from err
    except (OSError, subprocess.SubprocessError, ValueError) as err:
        raise LaunchFailed(argv, 1, log_tail(run.log) or str(err),
                           what="QEMU would not start") from err
    started = start_time(pid)
    if started is None:
        raise LaunchFailed(argv, reap(pid) or 1, log_tail(run.log) or
                           "QEMU exited right after starting", what="QEMU would not start")
    return Process(pid, started)


def reap(pid: int) -> int | None:
    """The exit status of our child ``pid`` that has ended (negative: its signal)."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status)
