"""A fake machine: the engine's :class:`~corral.engine.driver.Machine` interface, behaving
as QEMU does (see :mod:`corral.engine.fake`)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from corral.domain.specs import DiskSpec, NicSpec
from corral.engine.driver import (
    DEVICE_DELETED,
    RESET,
    RESUME,
    SHUTDOWN,
    STOP,
    ExecStatus,
    GuestInterface,
)
from corral.engine.fake.core import (
    NEEDS_RESET,
    STATE_FORMAT,
    VMSTATE_FORMAT,
    read_json,
    write_atomic,
)
from corral.engine.fake.migration import FakeLiveMigration
from corral.engine.qemu import argv as qargv
from corral.errors import AgentError, CorralError, MonitorError, Timeout


class FakeMachine(FakeLiveMigration):
    """One fake VM: a QEMU process, its monitor and its guest agent, as objects."""

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
        return write_atomic(target, json.dumps({
            "format": STATE_FORMAT, "vm": self.name, "runstate": before,
            "memory_bytes": self.spec.memory_bytes, "devices": self._devices(),
            "ram": None if shared else self.guest.ram()}).encode())

    def _refuse_incoming(self, why: str) -> MonitorError:
        self._loop.call_soon(self._end, 1)  # QEMU exits after a failed incoming migration
        return MonitorError("migrate", "MigrationFailed", f"load of migration failed: {why}")

    async def cancel_save(self) -> None:
        await self._qmp("cancel_save", "migrate_cancel", 5)  # the fake's saves end at once

    async def load_state(self, source: Path, ignore_shared: bool = False) -> None:
        await self._qmp("load_state", "migrate-incoming", 600)
        if self.runstate != "inmigrate":
            raise MonitorError("migrate-incoming", "GenericError",
                               "'-incoming' was not specified on the command line")
        state = read_json(Path(source), STATE_FORMAT)
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
        doc = read_json(path, VMSTATE_FORMAT)
        return path, dict(doc["snapshots"]) if doc else {}

    def _store(self, path: Path, table: dict[str, Any]) -> None:
        write_atomic(path, json.dumps({"format": VMSTATE_FORMAT, "snapshots": table}).encode())

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

    async def resize_disk(self, node: str, size: int) -> None:
        await self._qmp("resize_disk", "block_resize")
        if node not in self.disks:
            raise MonitorError("block_resize", "GenericError",
                               f"Cannot find device='' nor node-name='{node}'")
        self.sizes[node] = size

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
        deadline = self._loop.time() + timeout
        try:
            await self._qga("guest_wait_ready", "guest-sync-delimited", timeout)
        except AgentError:
            if self.exit is None:
                raise
            # like QGA's wait_ready, a channel that closes is retried until the deadline
            await asyncio.sleep(max(0.0, deadline - self._loop.time()))
            raise Timeout(f"guest agent of '{self.name}' did not answer in {timeout:g} s"
                          ) from None

    def guest_hold(self) -> AbstractAsyncContextManager[None]:
        """Nothing to hold: the fake agent answers each call whole, at once."""
        return contextlib.nullcontext()

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

    async def guest_feed(self, pid: int, handle: int, data: bytes, timeout: float = 5.0
                         ) -> bool:
        guest = await self._qga("guest_feed", "guest-exec-status", timeout)
        try:
            running = not guest.status(pid, self._loop.time())[0]
        except AgentError:
            running = False
        try:
            guest.write_handle(handle, data)
            guest.close(handle)
        except AgentError:
            return False
        return running

    async def guest_interfaces(self, timeout: float = 10.0) -> list[GuestInterface]:
        guest = await self._qga("guest_interfaces", "guest-network-get-interfaces", timeout)
        nics = list(self.nics.values())
        out = [GuestInterface("lo", "00:00:00:00:00:00", [("127.0.0.1", 8, "ipv4")])]
        for i, mac in enumerate(guest.macs):
            nic = nics[i] if i < len(nics) else None
            ip = nic.ip if nic is not None and nic.ip else "10.0.2.15"
            out.append(GuestInterface(f"eth{i}", mac, [(ip, 24, "ipv4")]))
        return out


