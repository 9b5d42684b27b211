"""The engine driver: everything the service asks of a virtual machine's engine, typed.

The service never speaks QMP or the guest-agent protocol; it calls a :class:`Driver` to start
or adopt a VM and gets a :class:`Machine`, the handle of one live VM (its process, its monitor
and its guest agent). :mod:`corral.engine.qemu.driver` is the real one; :mod:`corral.engine.fake`
behaves like it for the service's fast tests (states, events, exits, injected failures).

Events reach the service through one callback as ``(name, data)`` with the names below.
A machine's exit is reported once, through the callback given to :meth:`Machine.watch_exit`.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from corral.domain.specs import DiskSpec, NicSpec, VMSpec

#: Events a machine reports (QEMU's own names): the guest stopped or resumed, asked to power
#: off or was powered off, reset, panicked; a device was released by the guest.
STOP, RESUME, SHUTDOWN, RESET, GUEST_PANICKED, DEVICE_DELETED = (
    "STOP", "RESUME", "SHUTDOWN", "RESET", "GUEST_PANICKED", "DEVICE_DELETED")

EventHandler = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class ExitStatus:
    """How a machine's process ended: ``returncode`` (negative: killed by that signal), None
    when it could not be seen (not our child)."""

    returncode: int | None

    def describe(self) -> str:
        if self.returncode is None:
            return "exited (status unknown: not our child)"
        if self.returncode == -signal.SIGSYS:  # how the kernel ends a seccomp violation
            return "killed by SIGSYS (bad system call: seccomp)"
        if self.returncode < 0:
            try:
                return f"killed by {signal.Signals(-self.returncode).name}"
            except ValueError:
                return f"killed by signal {-self.returncode}"
        return f"exited with status {self.returncode}"


@dataclass(frozen=True)
class RamFile:
    """Guest RAM kept in a file: ``shared`` writes reach the file (templates); private maps it
    copy-on-write (warm-start clones)."""

    path: Path
    shared: bool


@dataclass
class LaunchOptions:
    """How to start a machine beyond its spec."""

    incoming: bool = False   # wait for a state stream instead of booting
    hold: bool = False       # stop before the first instruction (``-S``)
    ram: RamFile | None = None
    extra: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class MigrationOptions:
    """How a live migration runs. ``mirror`` names the disk nodes copied live to the target's
    NBD server at ``nbd`` (``host:port``) while RAM moves; disks on shared storage are left
    out. ``tls`` is a directory of x509 credentials (QEMU's file names) that encrypts the
    stream. A migration still running after ``timeout`` seconds is cancelled: it could not
    converge."""

    max_downtime: float = 0.3       # seconds the guest may stand still at the switch
    auto_converge: bool = True      # throttle the guest's vCPUs when it dirties too fast
    postcopy: bool = False          # switch to post-copy after the first full pass
    bandwidth: int | None = None    # bytes per second; None: as fast as the link
    mirror: tuple[str, ...] = ()
    nbd: str | None = None
    tls: Path | None = None
    timeout: float = 600.0


@dataclass(frozen=True)
class MigrationProgress:
    """One reading of a running migration (bytes; rates in bytes per second)."""

    status: str
    transferred: int = 0
    remaining: int = 0
    total: int = 0
    dirty_rate: int = 0
    expected_downtime: float = 0.0  # seconds
    passes: int = 0                 # full passes over RAM so far
    disk_done: int = 0
    disk_total: int = 0
    postcopy: bool = False


@dataclass(frozen=True)
class MigrationResult:
    total_time: float   # seconds from start to the guest running on the target
    downtime: float     # seconds the guest stood still
    transferred: int    # RAM bytes sent
    postcopy: bool


@dataclass(frozen=True)
class ExecStatus:
    """A guest process as the agent reports it."""

    exited: bool
    exitcode: int | None = None
    signal: int | None = None
    stdout: str = ""   # base64
    stderr: str = ""   # base64
    truncated: bool = False


@dataclass(frozen=True)
class GuestInterface:
    name: str
    mac: str | None
    addresses: list[tuple[str, int, str]]   # (address, prefix, "ipv4"|"ipv6")
    counters: dict[str, int] | None = None  # rx_bytes, tx_bytes, rx_packets, … when known


class Machine(Protocol):
    """One live VM. Methods raise :class:`~corral.errors.MonitorError` when the engine refuses,
    :class:`~corral.errors.Timeout` when it does not answer, and the ``guest_*`` ones
    :class:`~corral.errors.AgentError` when the guest agent fails."""

    name: str
    pid: int
    started: int          # the process's start time (clock ticks), to recognise it later
    has_agent: bool

    @property
    def alive(self) -> bool: ...

    # -- the process -------------------------------------------------------------------------
    def watch_exit(self, on_exit: Callable[[ExitStatus], None]) -> None: ...
    def unwatch(self) -> None: ...
    async def wait_exit(self, timeout: float | None = None) -> bool: ...
    def kill(self) -> None: ...
    async def close(self) -> None:
        """Let go of the machine's channels; the process keeps running."""
    def moved(self, name: str, run_dir: Path) -> None:
        """The VM was renamed ``name`` and its run directory moved to ``run_dir``; the
        process keeps running, and channels opened later use the new paths."""

    # -- run state ---------------------------------------------------------------------------
    async def status(self, timeout: float = 30.0) -> str:
        """The engine's run state: running, paused, inmigrate, postmigrate, shutdown, …"""
    async def pause(self) -> None: ...
    async def cont(self) -> None: ...
    async def quit(self, timeout: float = 2.0) -> None: ...
    async def powerdown(self) -> None: ...
    async def reset(self) -> None: ...
    def watch_event(self, event: str, match: Callable[[dict[str, Any]], bool]) -> Any:
        """An awaitable that completes when the machine reports ``event`` matching."""

    # -- whole state -------------------------------------------------------------------------
    async def save_state(self, target: Path, ignore_shared: bool = False) -> int:
        """Write the (paused) machine's state into ``target`` atomically; its size."""
    async def load_state(self, source: Path, ignore_shared: bool = False) -> None:
        """Feed a state to a machine launched ``incoming``."""
    async def cancel_save(self) -> None:
        """Stop a state stream that is still running (the guest stays as it is)."""

    # -- live migration ----------------------------------------------------------------------
    async def serve_incoming(self, uri: str, nbd: str | None = None,
                             disks: tuple[str, ...] = (), postcopy: bool = False,
                             tls: Path | None = None) -> None:
        """On a machine launched ``incoming`` and ``hold``: listen for a migration at ``uri``
        (``tcp:HOST:PORT``) and, with ``nbd``, serve ``disks`` writable there for the
        source's mirror."""
    async def migrate_to(self, uri: str, options: MigrationOptions,
                         on_progress: Callable[[MigrationProgress], None] | None = None
                         ) -> MigrationResult:
        """Move the running guest to the machine listening at ``uri``; on success this one
        is left stopped (``postmigrate``) for the caller to quit.

        :raises MigrationFailed: when it fails, is cancelled or cannot converge; the guest
            then keeps running here, and nothing of the attempt is left on this side.
        """
    async def cancel_migration(self) -> None:
        """Stop a running migration; the guest keeps running here."""
    async def finish_incoming(self, timeout: float = 600.0) -> None:
        """On the target: wait for the state to arrive, stop serving disks, run the guest.

        :raises MigrationFailed: when the stream ends without a complete state.
        """

    # -- snapshots (internal, on every listed node; ``vmstate`` holds the RAM) ---------------
    async def snapshot_save(self, tag: str, vmstate: str, devices: list[str]) -> None: ...
    async def snapshot_load(self, tag: str, vmstate: str, devices: list[str]) -> None: ...
    async def snapshot_delete(self, tag: str, devices: list[str]) -> None: ...

    # -- devices -----------------------------------------------------------------------------
    async def add_disk(self, disk: DiskSpec, node: str) -> None: ...
    async def remove_disk(self, node: str, timeout: float) -> None:
        """Ask the guest to let go of a disk and wait ``timeout`` for it (0: take it back at
        once, before the guest could use it)."""
    async def resize_disk(self, node: str, size: int) -> None: ...
    async def set_io_limits(self, node: str, iops: int, bps: int, pci: bool) -> None: ...
    async def block_stats(self) -> dict[str, dict[str, int]]: ...
    async def add_nic(self, nic: NicSpec, position: int) -> None: ...
    async def remove_nic(self, nic: NicSpec, position: int, timeout: float) -> None: ...
    async def vcpu_threads(self) -> list[int]: ...

    # -- guest agent -------------------------------------------------------------------------
    def guest_hold(self) -> AbstractAsyncContextManager[None]:
        """Keep the guest agent to the calling task: the guest calls it makes inside go one
        after another, with no other call between them.

        :raises AgentError: the VM has no guest agent.
        """
    async def guest_wait_ready(self, timeout: float) -> None: ...
    async def guest_reset_channel(self) -> None:
        """The guest rebooted: drop the agent channel so the next call starts afresh."""
    async def guest_ping(self, timeout: float) -> None: ...
    async def guest_shutdown(self, reboot: bool = False) -> None: ...
    async def guest_set_time(self, ns: int, timeout: float = 5.0) -> None: ...
    async def guest_exec(self, argv: list[str], stdin: bytes | None = None,
                         env: list[str] | None = None, capture: bool = True,
                         timeout: float = 30.0) -> int:
        """Start ``argv`` in the guest; its guest pid."""
    async def guest_exec_status(self, pid: int) -> ExecStatus: ...
    async def guest_open(self, path: str, mode: str) -> int:
        """Open a guest file (``rb``, ``wb``, ``r``…); its handle."""
    async def guest_read(self, handle: int, count: int) -> tuple[bytes, bool]:
        """Up to ``count`` bytes and whether the end of the file was reached."""
    async def guest_write(self, handle: int, data: bytes) -> None: ...
    async def guest_seek(self, handle: int, offset: int, whence: str) -> None: ...
    async def guest_flush(self, handle: int) -> None: ...
    async def guest_close(self, handle: int) -> None: ...
    async def guest_feed(self, pid: int, handle: int, data: bytes, timeout: float = 5.0
                         ) -> bool:
        """Write ``data`` to the open guest file ``handle`` (a pipe the process ``pid``
        reads) and close it, asking the agent all at once (under TCG every round trip to
        the guest counts); whether ``pid`` still ran to read it and both went through."""
    async def guest_interfaces(self, timeout: float = 10.0) -> list[GuestInterface]: ...


class Driver(Protocol):
    """Starts and re-adopts machines."""

    accel: str

    async def launch(self, spec: VMSpec, run_dir: Path, serial_log: Path,
                     on_event: EventHandler, options: LaunchOptions | None = None) -> Machine:
        """Start a machine for ``spec``; its sockets live in ``run_dir``.

        :raises LaunchFailed: the engine would not start (its own words in the message).
        """
    async def adopt(self, spec: VMSpec, run_dir: Path, pid: int | None, started: int | None,
                    on_event: EventHandler) -> Machine | None:
        """Take up a machine a previous daemon started, or None when it is gone."""
    def cleanup(self, run_dir: Path, keep_dir: bool = False, orphan: bool = False) -> None:
        """Remove the sockets and pidfile a machine left in ``run_dir``; with ``orphan``,
        first end the machine still running there that no record owns."""
    def end_stray(self, pid: int) -> bool:
        """End process ``pid``, found in a cgroup of this daemon's home that no record owns,
        if it is one of this engine's machines; whether it was."""
    def confinement_of(self, pid: int | None) -> dict[str, Any] | None:
        """What confines the machine whose process is ``pid`` (None: gone), or with None
        the confinement the driver applies to every machine it starts."""
