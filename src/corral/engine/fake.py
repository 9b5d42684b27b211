"""A fake engine driver that behaves like QEMU for the service, with no process at all.

A :class:`FakeMachine` is an object with QEMU's run state (``running``, ``paused``,
``prelaunch``, ``inmigrate``, ``postmigrate``…) that follows the calls as QEMU does, and
reports QEMU's events through the service's callback from the event loop, never inside the
call: ``pause``/``cont`` emit ``STOP``/``RESUME``; ``quit`` emits ``SHUTDOWN`` and exits 0;
``powerdown`` and ``guest_shutdown`` make the guest power off (``SHUTDOWN`` with ``guest:
true``, exit 0; a paused guest sees the ACPI button when it runs again); ``reset`` and a
guest reboot emit ``RESET`` and the agent answers again after the boot delay; ``kill`` exits
with -9. An exit is reported once through :meth:`FakeMachine.watch_exit` and wakes
:meth:`FakeMachine.wait_exit`. Its guest is a :class:`~corral.engine.fake_guest.FakeGuest`.

Files it writes where QEMU would: ``save_state`` a small JSON state (temporary name, mode
0600, renamed into place) that ``load_state`` accepts only on a machine launched
``incoming`` with the same memory size and devices (else ``MonitorError`` and the machine
exits 1, like QEMU after a failed incoming migration); memory snapshots into the VM's
``vmstate`` file (as JSON: a copy of the file carries its snapshots, like a copy of the
qcow2 does), which only the fake can read then; RAM into a shared ``RamFile`` (templates),
read back from a private one (clones). Tags on disk nodes are not written: reverting a
disk-only snapshot of a VM with writable disks needs real qcow2 snapshots.

Failure injection:

* ``driver.fail_next(op, error, times=1)``: the next call of ``op`` (``"launch"``,
  ``"adopt"`` or any :class:`FakeMachine` method name, on any machine) raises ``error``
  before it changes anything; ``machine.fail_next(op, error)`` for one machine.
* ``machine.crash()``: the process dies as if killed outside Corral (exit -9, no event).
* ``machine.panic()``: the guest panics (``GUEST_PANICKED``, then ``SHUTDOWN`` reason
  ``guest-panic`` and exit 0, QEMU's default action); ``panic(action="pause")`` only stops.
* ``machine.hang(channel, seconds=None)``: ``"guest"`` (agent calls wait until their timeout,
  or ``seconds`` if shorter, then raise Timeout), ``"monitor"`` (likewise for monitor calls),
  ``"acpi"`` (the guest ignores the power button and hot-unplug requests); ``unhang``.
* ``driver.boot_delay`` (seconds from first run to the agent answering, default 0.01) and
  ``driver.latency`` (the time every call takes, default 0: it still yields to the loop).

``FakeDriver.adopt`` finds machines a previous ``FakeDriver`` launched in the same run
directory (a class-level registry), so a test restarts the daemon with a new Manager on the
same home; ``FakeDriver.forget_all()`` empties the registry between tests.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from corral.domain.specs import DiskSpec, NicSpec, VMSpec
from corral.engine.driver import (
    DEVICE_DELETED,
    GUEST_PANICKED,
    RESET,
    RESUME,
    SHUTDOWN,
    STOP,
    EventHandler,
    ExecStatus,
    ExitStatus,
    GuestInterface,
    LaunchOptions,
)
from corral.engine.fake_guest import FakeGuest
from corral.engine.qemu import argv as qargv
from corral.errors import AgentError, CorralError, LaunchFailed, MonitorError, Timeout

log = logging.getLogger(__name__)
STATE_FORMAT = "corral-fake-state/1"
VMSTATE_FORMAT = "corral-fake-vmstate/1"
NEEDS_RESET = ("shutdown", "guest-panicked", "internal-error")
_PIDS = itertools.count(1 << 22)  # above Linux's largest pid: never a real process
Failures = dict[str, list[BaseException]]


def _inject(failures: Failures, op: str, error: BaseException, times: int) -> None:
    if not hasattr(FakeMachine, op) and op not in ("launch", "adopt"):
        raise ValueError(f"the fake engine has no operation '{op}'")
    failures.setdefault(op, []).extend([error] * times)


def _write_atomic(target: Path, data: bytes) -> int:
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


def _read_json(path: Path, fmt: str) -> dict[str, Any] | None:
    """The fake's document in ``path``, or None (missing, a real qcow2, another format)."""
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == fmt else None


class FakeMachine:
    """One fake VM: its run state, devices, snapshots' home and guest."""

    def __init__(self, driver: FakeDriver, spec: VMSpec, run_dir: Path,
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
        self._waiters: list[tuple[str, Callable[[dict[str, Any]], bool],
                                  asyncio.Future[None]]] = []
        self._failures: Failures = {}
        self._hung: dict[str, float | None] = {}
        self._boot: asyncio.TimerHandle | None = None
        self._power_pending = False
        if self.ram_file is not None and not self.ram_file.shared:
            ram = _read_json(self.ram_file.path, STATE_FORMAT)
            if ram is not None:
                self.guest.load_ram(ram["ram"])
        if self.runstate == "running":
            self._ran()

    # -- test hooks ----------------------------------------------------------------------
    def fail_next(self, op: str, error: BaseException, times: int = 1) -> None:
        """The next ``times`` calls of method ``op`` raise ``error``, changing nothing."""
        _inject(self._failures, op, error, times)

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

    def attach(self, driver: FakeDriver, on_event: EventHandler) -> None:
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
        for waiter in list(self._waiters):
            name, match, fut = waiter
            if name == event and not fut.done() and match(data):
                fut.set_result(None)
            if fut.done():
                self._waiters.remove(waiter)
        if self._on_event is None:
            return
        try:
            self._on_event(event, data)
        except Exception as err:  # the real monitor logs a failing handler and goes on
            log.exception("event handler failed for %s", self.name)
            self.handler_errors.append(err)

    def watch_event(self, event: str, match: Callable[[dict[str, Any]], bool]
                    ) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = self._loop.create_future()
        self._waiters.append((event, match, fut))
        return fut

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

    async def status(self, timeout: float = 30.0) -> str:
        await self._qmp("status", "query-status", timeout)
        return self.runstate

    async def pause(self) -> None:
        await self._qmp("pause", "stop")
        if self.runstate == "inmigrate":
            self.autostart = False
        elif self.runstate == "running":
            self.runstate = "paused"
            self._emit(STOP, {})
            self._notify()

    async def cont(self) -> None:
        await self._qmp("cont", "cont")
        if self.runstate in NEEDS_RESET:
            raise MonitorError("cont", "GenericError", "Resetting the Virtual Machine is "
                                                       "required")
        if self.runstate == "inmigrate":
            self.autostart = True
        elif self.runstate != "running":
            self._resume()

    async def quit(self, timeout: float = 2.0) -> None:
        await self._qmp("quit", "quit", timeout)
        self._emit(SHUTDOWN, {"guest": False, "reason": "host-qmp-quit"})
        self._loop.call_soon(self._end, 0)

    async def powerdown(self) -> None:
        await self._qmp("powerdown", "system_powerdown")
        if "acpi" in self._hung:
            return
        if self.runstate == "running":
            self._guest_power("poweroff")
        else:
            self._power_pending = True

    async def reset(self) -> None:
        await self._qmp("reset", "system_reset")
        self._emit(RESET, {"guest": False, "reason": "host-qmp-system-reset"})
        self._reboot()

    # -- whole state ---------------------------------------------------------------------
    def _devices(self) -> dict[str, list[str]]:
        return {"disks": sorted(self.disks), "nics": sorted(self.nics)}

    def _sync_ram(self) -> None:
        if self.ram_file is not None and self.ram_file.shared:
            _write_atomic(self.ram_file.path, json.dumps(
                {"format": STATE_FORMAT, "ram": self.guest.ram()}).encode())

    def _load_ram(self, ram: dict[str, Any]) -> None:
        if self._boot is not None:
            self._boot.cancel()
            self._boot = None
        self.guest.load_ram(ram)
        self._sync_ram()

    async def save_state(self, target: Path, ignore_shared: bool = False) -> int:
        await self._qmp("save_state", "migrate", 600)
        if self.runstate == "inmigrate":
            raise MonitorError("migrate", "GenericError", "Guest is waiting for an incoming "
                                                          "migration")
        before = self.runstate
        if before == "running":
            self._emit(STOP, {})
        self.runstate = "postmigrate"
        self._notify()
        shared = ignore_shared and self.ram_file is not None and self.ram_file.shared
        self._sync_ram()
        return _write_atomic(target, json.dumps({
            "format": STATE_FORMAT, "vm": self.name, "runstate": before,
            "memory_bytes": self.spec.memory_bytes, "devices": self._devices(),
            "ram": None if shared else self.guest.ram()}).encode())

    def _refuse_incoming(self, why: str) -> MonitorError:
        self._loop.call_soon(self._end, 1)  # QEMU exits after a failed incoming migration
        return MonitorError("migrate", "MigrationFailed", f"load of migration failed: {why}")

    async def load_state(self, source: Path, ignore_shared: bool = False) -> None:
        await self._qmp("load_state", "migrate-incoming", 600)
        if self.runstate != "inmigrate":
            raise MonitorError("migrate-incoming", "GenericError",
                               "'-incoming' was not specified on the command line")
        state = _read_json(Path(source), STATE_FORMAT)
        if state is None or "runstate" not in state:
            raise self._refuse_incoming("Invalid argument")
        if state["memory_bytes"] != self.spec.memory_bytes:
            raise self._refuse_incoming(f"Length mismatch: pc.ram: {state['memory_bytes']:#x} "
                                        f"in != {self.spec.memory_bytes:#x}")
        if state["devices"] != self._devices():
            raise self._refuse_incoming(f"devices differ: {state['devices']} in, "
                                        f"{self._devices()} here")
        if state["ram"] is None and self.ram_file is None:
            raise self._refuse_incoming("the stream has no RAM and no RAM file is mapped")
        if state["ram"] is not None:
            self._load_ram(state["ram"])
        if state["runstate"] == "running" and self.autostart:
            self._resume()
        else:
            running = state["runstate"] in ("running", "postmigrate", "finish-migrate")
            self.runstate = "paused" if running else str(state["runstate"])
            self._notify()

    # -- snapshots -----------------------------------------------------------------------
    def _table(self, command: str, vmstate: str, devices: list[str]) -> tuple[Path, dict[str, Any]]:
        for node in devices:
            if node not in self.disks and node != qargv.VMSTATE_NODE:
                raise CorralError(f"{command} failed: Cannot find device='' nor "
                                  f"node-name='{node}'")
        if vmstate != qargv.VMSTATE_NODE or not self.spec.vmstate:
            raise CorralError(f"{command} failed: the fake engine keeps a snapshot's state "
                              f"only in the '{qargv.VMSTATE_NODE}' node")
        path = Path(self.spec.vmstate)
        doc = _read_json(path, VMSTATE_FORMAT)
        return path, dict(doc["snapshots"]) if doc else {}

    def _store(self, path: Path, table: dict[str, Any]) -> None:
        _write_atomic(path, json.dumps({"format": VMSTATE_FORMAT, "snapshots": table}).encode())

    async def snapshot_save(self, tag: str, vmstate: str, devices: list[str]) -> None:
        await self._qmp("snapshot_save", "snapshot-save")
        path, table = self._table("snapshot-save", vmstate, devices)
        if tag in table:
            raise CorralError(f"snapshot-save failed: Snapshot '{tag}' already exists in one "
                              "or more devices")
        running = self.runstate == "running"
        if running:  # QEMU stops the guest for the save and starts it again
            self._emit(STOP, {})
        table[tag] = {"devices": self._devices(), "ram": self.guest.ram()}
        self._store(path, table)
        if running:
            self._emit(RESUME, {})
        await asyncio.sleep(0)  # the job's events arrive before it is seen concluded

    async def snapshot_load(self, tag: str, vmstate: str, devices: list[str]) -> None:
        await self._qmp("snapshot_load", "snapshot-load")
        _, table = self._table("snapshot-load", vmstate, devices)
        snap = table.get(tag)
        if snap is None:
            raise CorralError(f"snapshot-load failed: Snapshot '{tag}' does not exist in one "
                              "or more devices")
        if snap["devices"] != self._devices():
            raise CorralError("snapshot-load failed: Error -22 while loading VM state")
        running = self.runstate == "running"
        if running:
            self._emit(STOP, {})
        self._load_ram(snap["ram"])
        if running:
            self._emit(RESUME, {})
            self._ran()
        await asyncio.sleep(0)

    async def snapshot_delete(self, tag: str, devices: list[str]) -> None:
        await self._qmp("snapshot_delete", "snapshot-delete")
        if qargv.VMSTATE_NODE in devices:  # like QEMU, a tag a node lacks is skipped
            path, table = self._table("snapshot-delete", qargv.VMSTATE_NODE, devices)
            if table.pop(tag, None) is not None:
                self._store(path, table)

    # -- devices -------------------------------------------------------------------------
    async def _unplug(self, device: str, timeout: float) -> None:
        gone = self.watch_event(DEVICE_DELETED, lambda d: d.get("device") == device)
        if not await self._until(lambda: self.runstate == "running" and self.guest.up,
                                 timeout, "acpi"):
            raise Timeout(f"the guest in '{self.name}' did not release {device} in "
                          f"{timeout:g} s")
        self._emit(DEVICE_DELETED, {"device": device, "path": f"/machine/peripheral/{device}"})
        await gone

    async def add_disk(self, disk: DiskSpec, node: str) -> None:
        await self._qmp("add_disk", "blockdev-add")
        if node in self.disks:
            raise MonitorError("blockdev-add", "GenericError",
                               f"Duplicate nodes with node-name='{node}'")
        if not Path(disk.path).is_file():
            raise MonitorError("blockdev-add", "GenericError",
                               f"Could not open '{disk.path}': No such file or directory")
        self.disks[node] = disk

    async def remove_disk(self, node: str, timeout: float) -> None:
        await self._qmp("remove_disk", "device_del")
        if node not in self.disks:
            raise MonitorError("device_del", "DeviceNotFound", f"Device 'vd-{node}' not found")
        if timeout > 0:
            await self._unplug(f"vd-{node}", timeout)
        else:
            self._emit(DEVICE_DELETED, {"device": f"vd-{node}"})
        del self.disks[node]
        self.io_limits.pop(node, None)

    async def set_io_limits(self, node: str, iops: int, bps: int, pci: bool) -> None:
        await self._qmp("set_io_limits", "block_set_io_throttle")
        if node not in self.disks:
            raise MonitorError("block_set_io_throttle", "DeviceNotFound",
                               f"Device '/machine/peripheral/vd-{node}' not found")
        self.io_limits[node] = (iops, bps)

    async def block_stats(self) -> dict[str, dict[str, int]]:
        await self._qmp("block_stats", "query-blockstats", 2)
        return {node: dict.fromkeys(("rd_bytes", "wr_bytes", "rd_operations",
                                     "wr_operations"), 0) for node in self.disks}

    async def add_nic(self, nic: NicSpec, position: int) -> None:
        await self._qmp("add_nic", "netdev_add")
        device = nic.device(position)
        if device in self.nics:
            raise MonitorError("device_add", "GenericError", f"Duplicate ID '{device}' for "
                                                             "device")
        self.nics[device] = nic
        self.guest.macs.append(nic.mac)

    async def remove_nic(self, nic: NicSpec, position: int, timeout: float) -> None:
        await self._qmp("remove_nic", "device_del")
        device = nic.device(position)
        if device not in self.nics:
            raise MonitorError("device_del", "DeviceNotFound", f"Device '{device}' not found")
        await self._unplug(device, timeout)
        del self.nics[device]
        with contextlib.suppress(ValueError):
            self.guest.macs.remove(nic.mac)

    async def vcpu_threads(self) -> list[int]:
        await self._qmp("vcpu_threads", "query-cpus-fast")
        return []  # no threads to pin: the fake has none

    # -- guest agent ---------------------------------------------------------------------
    async def guest_wait_ready(self, timeout: float) -> None:
        await self._qga("guest_wait_ready", "guest-sync-delimited", timeout)

    async def guest_reset_channel(self) -> None:
        """Nothing to drop: the fake channel holds no stale replies."""

    async def guest_ping(self, timeout: float) -> None:
        await self._qga("guest_ping", "guest-ping", timeout)

    async def guest_shutdown(self, reboot: bool = False) -> None:
        await self._qga("guest_shutdown", "guest-shutdown", 5)
        self._guest_power("reboot" if reboot else "poweroff")

    async def guest_set_time(self, ns: int, timeout: float = 5.0) -> None:
        (await self._qga("guest_set_time", "guest-set-time", timeout)).clock_ns = ns

    async def guest_exec(self, argv: list[str], stdin: bytes | None = None,
                         env: list[str] | None = None, capture: bool = True,
                         timeout: float = 30.0) -> int:
        guest = await self._qga("guest_exec", "guest-exec", timeout)
        return guest.spawn(argv, stdin, capture, self._loop.time())

    async def guest_exec_status(self, pid: int) -> ExecStatus:
        guest = await self._qga("guest_exec_status", "guest-exec-status")
        exited, run = guest.status(pid, self._loop.time())
        if not exited:
            return ExecStatus(exited=False)
        return ExecStatus(exited=True, exitcode=run.code, stdout=base64.b64encode(
            run.out).decode(), stderr=base64.b64encode(run.err).decode())

    async def guest_open(self, path: str, mode: str) -> int:
        return (await self._qga("guest_open", "guest-file-open")).open(path, mode)

    async def guest_read(self, handle: int, count: int) -> tuple[bytes, bool]:
        return (await self._qga("guest_read", "guest-file-read")).read(handle, count)

    async def guest_write(self, handle: int, data: bytes) -> None:
        (await self._qga("guest_write", "guest-file-write")).write_handle(handle, data)

    async def guest_seek(self, handle: int, offset: int, whence: str) -> None:
        (await self._qga("guest_seek", "guest-file-seek")).seek(handle, offset, whence)

    async def guest_flush(self, handle: int) -> None:
        (await self._qga("guest_flush", "guest-file-flush"))._handle(handle)

    async def guest_close(self, handle: int) -> None:
        (await self._qga("guest_close", "guest-file-close")).close(handle)

    async def guest_interfaces(self, timeout: float = 10.0) -> list[GuestInterface]:
        guest = await self._qga("guest_interfaces", "guest-network-get-interfaces", timeout)
        nics = list(self.nics.values())
        out = [GuestInterface("lo", "00:00:00:00:00:00", [("127.0.0.1", 8, "ipv4")])]
        for i, mac in enumerate(guest.macs):
            nic = nics[i] if i < len(nics) else None
            ip = nic.ip if nic is not None and nic.ip else "10.0.2.15"
            out.append(GuestInterface(f"eth{i}", mac, [(ip, 24, "ipv4")]))
        return out


class FakeDriver:
    """Starts fake machines; see the module's docstring for what tests can make go wrong."""

    _registry: ClassVar[dict[Path, FakeMachine]] = {}  # live machines by run directory

    def __init__(self, accel: str = "tcg", boot_delay: float = 0.01,
                 latency: float = 0.0) -> None:
        self.accel = accel
        self.boot_delay = boot_delay
        self.latency = latency
        self.launched: list[FakeMachine] = []
        self.failures: Failures = {}

    def fail_next(self, op: str, error: BaseException, times: int = 1) -> None:
        """The next ``times`` calls of ``op`` (``launch``, ``adopt`` or a machine method, on
        any machine) raise ``error``, changing nothing."""
        _inject(self.failures, op, error, times)

    def machine(self, name: str) -> FakeMachine:
        """The machine of VM ``name``: the last launched or adopted one still alive, else
        the last one.

        :raises KeyError: none was ever launched for it.
        """
        mine = [m for m in self.launched if m.name == name]
        if not mine:
            raise KeyError(name)
        return next((m for m in reversed(mine) if m.alive), mine[-1])

    @classmethod
    def forget_all(cls) -> None:
        """Forget every live machine (between tests)."""
        cls._registry.clear()

    def gone(self, machine: FakeMachine) -> None:
        if self._registry.get(machine.run_dir) is machine:
            del self._registry[machine.run_dir]

    def cleanup(self, run_dir: Path, keep_dir: bool = False) -> None:
        run = qargv.RunPaths(run_dir)
        for path in (run.qmp, run.agent, run.console, run.pidfile):
            path.unlink(missing_ok=True)
        if not keep_dir:
            with contextlib.suppress(OSError):
                run_dir.rmdir()

    async def launch(self, spec: VMSpec, run_dir: Path, serial_log: Path,
                     on_event: EventHandler, options: LaunchOptions | None = None
                     ) -> FakeMachine:
        opts = options or LaunchOptions()
        run = qargv.RunPaths(run_dir.absolute())
        run.dir.mkdir(parents=True, exist_ok=True)
        self.cleanup(run.dir, keep_dir=True)
        await asyncio.sleep(self.latency)
        argv = qargv.build(spec, run, serial_log, self.accel, ram=opts.ram)
        argv += (["-incoming", "defer"] if opts.incoming else []) + \
            (["-S"] if opts.hold else []) + opts.extra
        if self.failures.get("launch"):
            raise self.failures["launch"].pop(0)
        problem = _launch_problem(spec, run.dir in self._registry)
        if problem:
            raise LaunchFailed(argv, 1, f"{argv[0]}: {problem}", what="QEMU would not start")
        machine = FakeMachine(self, spec.model_copy(deep=True), run.dir, on_event, opts)
        run.pidfile.write_text(f"{machine.pid}\n")
        for sock in (run.qmp, run.console) + ((run.agent,) if spec.agent else ()):
            sock.touch()
        with serial_log.open("a") as log_file:
            log_file.write(f"fake: {spec.name} started ({' '.join(argv[-3:])})\n")
        self._registry[run.dir] = machine
        self.launched.append(machine)
        return machine

    async def adopt(self, spec: VMSpec, run_dir: Path, pid: int | None, started: int | None,
                    on_event: EventHandler) -> FakeMachine | None:
        await asyncio.sleep(self.latency)
        if self.failures.get("adopt"):
            raise self.failures["adopt"].pop(0)
        machine = self._registry.get(run_dir.absolute())
        if machine is None or not machine.alive or \
                (pid is None and not qargv.RunPaths(run_dir).pidfile.is_file()) or \
                pid not in (None, machine.pid) or started not in (None, machine.started):
            return None
        machine.attach(self, on_event)
        self.launched.append(machine)
        return machine


def _launch_problem(spec: VMSpec, running: bool) -> str | None:
    """Why QEMU would refuse ``spec`` here, in its words; None when it would start."""
    if running:
        return "the fake engine already runs a machine in this run directory"
    if spec.kernel and not Path(spec.kernel).is_file():
        return f"could not open kernel file '{spec.kernel}': No such file or directory"
    if spec.initrd and not Path(spec.initrd).is_file():
        return f"could not load initrd '{spec.initrd}'"
    for path in [d.path for d in spec.disks] + ([spec.vmstate] if spec.vmstate else []):
        if not Path(path).is_file():
            return f"Could not open '{path}': No such file or directory"
    return None
