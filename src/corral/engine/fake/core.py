"""The mechanics of a fake machine: its channels (monitor, agent), events, exit, test hooks
and the guest's boot; :mod:`.machine` builds the engine's interface on them."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from corral.domain.specs import DiskSpec, NicSpec, VMSpec
from corral.engine.driver import (
    GUEST_PANICKED,
    RESET,
    RESUME,
    SHUTDOWN,
    STOP,
    EventHandler,
    ExitStatus,
    LaunchOptions,
)
from corral.engine.events import EventWaiters
from corral.engine.fake.guest import FakeGuest
from corral.errors import AgentError, MonitorError, Timeout

log = logging.getLogger(__name__)
STATE_FORMAT = "corral-fake-state/1"
VMSTATE_FORMAT = "corral-fake-vmstate/1"
NEEDS_RESET = ("shutdown", "guest-panicked", "internal-error")
_PIDS = itertools.count(1 << 22)  # above Linux's largest pid: never a real process
Failures = dict[str, list[BaseException]]


class Launcher(Protocol):
    """What a machine needs of the driver that launched or adopted it."""

    boot_delay: float
    latency: float
    failures: Failures

    def gone(self, machine: MachineCore) -> None: ...
    def moved(self, machine: MachineCore, old: Path) -> None: ...


def inject(failures: Failures, op: str, error: BaseException, times: int,
           machine: type[object]) -> None:
    """Queue ``error`` for the next ``times`` calls of ``op``.

    :raises ValueError: ``op`` is neither ``launch``, ``adopt`` nor a method of ``machine``.
    """
    if not hasattr(machine, op) and op not in ("launch", "adopt"):
        raise ValueError(f"the fake engine has no operation '{op}'")
    failures.setdefault(op, []).extend([error] * times)


def write_atomic(target: Path, data: bytes) -> int:
    """Write ``data`` under a temporary name (mode 0600), fsync, rename onto ``target``."""
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return len(data)


def read_json(path: Path, fmt: str) -> dict[str, Any] | None:
    """The fake's document in ``path``, or None (missing, a real qcow2, another format)."""
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == fmt else None


class MachineCore:
    """One fake VM's state and channels."""

    def __init__(self, driver: Launcher, spec: VMSpec, run_dir: Path,
                 on_event: EventHandler, opts: LaunchOptions) -> None:
        self.driver, self.spec, self.run_dir = driver, spec, run_dir
        self.name, self.has_agent = spec.name, spec.agent
        self.pid = self.started = next(_PIDS)
        self.runstate = "inmigrate" if opts.incoming else "prelaunch" if opts.hold else "running"
        self.autostart = not opts.hold
        self.ram_file = opts.ram
        self.disks: dict[str, DiskSpec] = {d.node(i): d for i, d in enumerate(spec.disks)}
        self.nics: dict[str, NicSpec] = {n.device(i): n for i, n in enumerate(spec.nics)}
        self.io_limits: dict[str, tuple[int, int]] = {}
        self.sizes: dict[str, int] = {}  # disks resized while it runs
        self.guest = FakeGuest(spec.name, [n.mac for n in spec.nics])
        self.guest.on_power = self._guest_power
        self.exit: ExitStatus | None = None
        self.handler_errors: list[Exception] = []  # raised by the service's event handler
        self._loop = asyncio.get_running_loop()
        self._on_event: EventHandler | None = on_event
        self._on_exit: Callable[[ExitStatus], None] | None = None
        self._reported = False
        self._exited = asyncio.Event()
        self._changed = asyncio.Event()
        self._waiters = EventWaiters()
        self._failures: Failures = {}
        self._hung: dict[str, float | None] = {}
        self._boot: asyncio.TimerHandle | None = None
        self._power_pending = False
        if self.ram_file is not None and not self.ram_file.shared:
            ram = read_json(self.ram_file.path, STATE_FORMAT)
            if ram is not None:
                self.guest.load_ram(ram["ram"])
        if self.runstate == "running":
            self._ran()

    # -- test hooks ----------------------------------------------------------------------
    def fail_next(self, op: str, error: BaseException, times: int = 1) -> None:
        """The next ``times`` calls of method ``op`` raise ``error``, changing nothing."""
        inject(self._failures, op, error, times, type(self))

    def moved(self, name: str, run_dir: Path) -> None:
        old, self.name, self.run_dir = self.run_dir, name, run_dir.absolute()
        self.driver.moved(self, old)

    def crash(self) -> None:
        """The process dies as if killed outside Corral."""
        self._end(-9)

    def panic(self, action: str = "poweroff") -> None:
        """The guest kernel panics; QEMU acts as ``-action panic=ACTION`` says."""
        self._emit(GUEST_PANICKED, {"action": action})
        if action == "pause":
            self.runstate = "guest-panicked"
            self._emit(STOP, {})
        else:
            self._emit(SHUTDOWN, {"guest": True, "reason": "guest-panic"})
            self._loop.call_soon(self._end, 0)

    def hang(self, channel: str, seconds: float | None = None) -> None:
        """Make ``"guest"``, ``"monitor"`` or ``"acpi"`` stop answering."""
        if channel not in ("guest", "monitor", "acpi"):
            raise ValueError(f"no channel '{channel}'")
        self._hung[channel] = seconds

    def unhang(self, channel: str) -> None:
        self._hung.pop(channel, None)
        self._notify()

    def attach(self, driver: Launcher, on_event: EventHandler) -> None:
        """A new daemon takes the machine up (adoption)."""
        self.driver, self._on_event, self._on_exit = driver, on_event, None

    # -- events and exit -----------------------------------------------------------------
    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _emit(self, event: str, data: dict[str, Any]) -> None:
        if self.exit is None:
            self._loop.call_soon(self._deliver, event, data)

    def _deliver(self, event: str, data: dict[str, Any]) -> None:
        self._waiters.deliver(event, data)
        if self._on_event is None:
            return
        try:
            self._on_event(event, data)
        except Exception as err:  # the real monitor logs a failing handler and goes on
            log.exception("event handler failed for %s", self.name)
            self.handler_errors.append(err)

    def watch_event(self, event: str, match: Callable[[dict[str, Any]], bool]
                    ) -> asyncio.Future[None]:
        return self._waiters.watch(event, match)

    def _end(self, code: int) -> None:
        if self.exit is not None:
            return
        self.exit = ExitStatus(code)
        if self._boot is not None:
            self._boot.cancel()
        self._sync_ram()
        self.driver.gone(self)
        self._exited.set()
        self._notify()
        self._loop.call_soon(self._report_exit)

    def _report_exit(self) -> None:
        if self._on_exit is not None and self.exit is not None and not self._reported:
            self._reported = True
            self._on_exit(self.exit)

    @property
    def alive(self) -> bool:
        return self.exit is None

    def watch_exit(self, on_exit: Callable[[ExitStatus], None]) -> None:
        self._on_exit = on_exit
        if self.exit is not None:
            self._loop.call_soon(self._report_exit)

    def unwatch(self) -> None:
        self._on_exit = None

    async def wait_exit(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._exited.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def kill(self) -> None:
        self._loop.call_soon(self._end, -9)  # a signal is seen on the loop, like a pidfd

    async def close(self) -> None:
        self._on_event = None

    # -- the channels --------------------------------------------------------------------
    def _injected(self, op: str) -> None:
        for failures in (self._failures, self.driver.failures):
            if failures.get(op):
                raise failures[op].pop(0)

    async def _hang(self, channel: str, timeout: float) -> None:
        seconds = self._hung[channel]
        await asyncio.sleep(timeout if seconds is None else min(seconds, timeout))

    async def _qmp(self, op: str, command: str, timeout: float = 30.0) -> None:
        await asyncio.sleep(self.driver.latency)
        self._injected(op)
        if self.exit is not None or self._on_event is None:
            raise MonitorError(command, "Disconnected", "monitor connection lost (EOF)")
        if "monitor" in self._hung:
            await self._hang("monitor", timeout)
            raise Timeout(f"QEMU did not answer {command} in {timeout:g} s")

    async def _until(self, ready: Callable[[], bool], timeout: float, channel: str) -> bool:
        """Wait until ``ready()`` while ``channel`` answers; whether it happened in time."""
        seconds = self._hung.get(channel)
        deadline = self._loop.time() + (timeout if seconds is None else min(timeout, seconds))
        while self.exit is None:
            if channel not in self._hung and ready():
                return True
            left = deadline - self._loop.time()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return False

    async def _qga(self, op: str, command: str, timeout: float = 30.0) -> FakeGuest:
        await asyncio.sleep(self.driver.latency)
        self._injected(op)
        if not self.has_agent:
            raise AgentError(f"VM '{self.name}' has no guest agent")
        if not await self._until(lambda: self.runstate == "running" and self.guest.up,
                                 timeout, "guest"):
            if self.exit is not None:
                raise AgentError(f"guest agent channel of '{self.name}' closed")
            raise Timeout(f"guest agent of '{self.name}' did not answer {command} in "
                          f"{timeout:g} s")
        return self.guest

    # -- run state -----------------------------------------------------------------------
    def _ran(self) -> None:
        """The guest runs: a cold one boots; a pending power button is seen."""
        if not self.guest.up and self._boot is None:
            self._boot = self._loop.call_later(self.driver.boot_delay, self._booted)
        if self._power_pending:
            self._power_pending = False
            self._guest_power("poweroff")
        self._notify()

    def _booted(self) -> None:
        self._boot = None
        self.guest.up = True
        self._notify()

    def _resume(self) -> None:
        self.runstate = "running"
        self._emit(RESUME, {})
        self._ran()

    def _guest_power(self, what: str) -> None:
        if what == "reboot":
            self._emit(RESET, {"guest": True, "reason": "guest-reset"})
            self._loop.call_soon(self._reboot)
        else:
            self._emit(SHUTDOWN, {"guest": True, "reason": "guest-shutdown"})
            self._loop.call_soon(self._end, 0)

    def _reboot(self) -> None:
        if self._boot is not None:
            self._boot.cancel()
            self._boot = None
        self.guest.up = False
        if self.runstate == "running":
            self._ran()

    def _devices(self) -> dict[str, list[str]]:
        return {"disks": sorted(self.disks), "nics": sorted(self.nics)}

    def _sync_ram(self) -> None:
        if self.ram_file is not None and self.ram_file.shared:
            write_atomic(self.ram_file.path, json.dumps(
                {"format": STATE_FORMAT, "ram": self.guest.ram()}).encode())

    def _load_ram(self, ram: dict[str, Any]) -> None:
        if self._boot is not None:
            self._boot.cancel()
            self._boot = None
        self.guest.load_ram(ram)
        self._sync_ram()

