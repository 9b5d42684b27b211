"""The QEMU engine driver: a :class:`~corral.engine.driver.Machine` is one QEMU process, its
QMP monitor and its guest agent, and every QMP and guest-agent command Corral sends is
written here (or in :mod:`.qmp` and :mod:`.guest_agent`, the two channels it speaks through).

Save and restore are QEMU migration into a file descriptor Corral opened and passed over QMP
(``getfd`` + ``migrate fd:``): QEMU opens no path of ours and no shell runs. The state is
written under a temporary name, fsynced and renamed, so a failure never leaves a partial
state where a restore would pick it up. QEMU 7.2 caps migration at 128 MiB/s even for a
stopped VM; the driver lifts the cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corral.domain.specs import DiskSpec, NicSpec, VMSpec
from corral.engine.driver import DEVICE_DELETED, EventHandler, ExitStatus, LaunchOptions
from corral.engine.events import EventWaiters
from corral.engine.qemu import argv as qargv
from corral.engine.qemu import confine
from corral.engine.qemu.confine import Confinement
from corral.engine.qemu.guest_agent import GuestAgent
from corral.engine.qemu.guest_ops import GuestOps
from corral.engine.qemu.migration import LiveMigration
from corral.engine.qemu.process import Process, end_orphan, launch, log_tail, reap, start_time
from corral.engine.qemu.process import end_stray as _end_stray
from corral.engine.qemu.qmp import Monitor
from corral.engine.qemu.spawn import listening, opened_taps
from corral.errors import CorralError, LaunchFailed, MonitorError, Timeout
from corral.host.tap import open_tap

UNLIMITED = 1 << 40  # bytes per second: no cap
STATE_FD = "corral-state"


def _fsync(path: Path, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class QemuMachine(GuestOps, LiveMigration):
    """One QEMU process with its monitor and (optional) guest agent (whose calls are
    :class:`~.guest_ops.GuestOps`; live migration is :class:`~.migration.LiveMigration`)."""

    def __init__(self, name: str, process: Process, monitor: Monitor,
                 agent: GuestAgent | None, confinement: Confinement | None = None,
                 on_gone: Callable[[], None] | None = None) -> None:
        self.name = name
        self.confinement = confinement or Confinement()
        self.on_gone = on_gone  # the driver keeps account of its running QEMUs
        self.process = process
        self.monitor = monitor
        self.agent = agent
        self.pid = process.pid
        self.started = process.started
        self.has_agent = agent is not None
        self._waiters = EventWaiters()

    # -- events ------------------------------------------------------------------------------
    def deliver(self, event: str, data: dict[str, Any]) -> None:
        """Complete the waiters of ``event`` (called for every event before the service's
        handler)."""
        self._waiters.deliver(event, data)

    def watch_event(self, event: str, match: Callable[[dict[str, Any]], bool]
                    ) -> asyncio.Future[None]:
        return self._waiters.watch(event, match)

    # -- the process -------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self.process.alive

    def watch_exit(self, on_exit: Callable[[ExitStatus], None]) -> None:
        def ended(status: ExitStatus) -> None:
            if self.on_gone is not None:
                self.on_gone()
            on_exit(status)
        self.process.watch(ended)

    def unwatch(self) -> None:
        self.process.unwatch()

    async def wait_exit(self, timeout: float | None = None) -> bool:
        return await self.process.wait(timeout)

    def kill(self) -> None:
        self.process.signal(9)

    def moved(self, name: str, run_dir: Path) -> None:
        self.name = self.monitor.name = name
        if self.agent is not None:
            self.agent.vm, self.agent.path = name, qargv.RunPaths(run_dir).agent

    async def close(self) -> None:
        await self.monitor.close()
        if self.agent is not None:
            await self.agent.close()

    # -- run state ---------------------------------------------------------------------------
    async def status(self, timeout: float = 30.0) -> str:
        return str((await self.monitor.execute("query-status", timeout=timeout))["status"])

    async def pause(self) -> None:
        await self.monitor.execute("stop")

    async def cont(self) -> None:
        await self.monitor.execute("cont")

    async def quit(self, timeout: float = 2.0) -> None:
        await self.monitor.execute("quit", timeout=timeout)

    async def powerdown(self) -> None:
        await self.monitor.execute("system_powerdown")

    async def reset(self) -> None:
        await self.monitor.execute("system_reset")

    # -- whole state -------------------------------------------------------------------------
    async def _ignore_shared(self) -> None:
        await self.monitor.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": "x-ignore-shared", "state": True}]})

    async def _hand_over(self, fd: int, ignore_shared: bool) -> None:
        """Pass QEMU the state file's descriptor (closed here either way), and with
        ``ignore_shared`` leave RAM that lives in a shared file out of the stream."""
        try:
            await self.monitor.send_fd(fd, STATE_FD)
        finally:
            os.close(fd)
        if ignore_shared:
            await self._ignore_shared()

    async def save_state(self, target: Path, ignore_shared: bool = False) -> int:
        """:raises CorralError: when the stream fails (no partial file is left)."""
        tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            await self._hand_over(fd, ignore_shared)
            await self.monitor.execute("migrate-set-parameters", {"max-bandwidth": UNLIMITED})
            await self.monitor.execute("migrate", {"uri": f"fd:{STATE_FD}"})
            await self.monitor.wait_migration()
            _fsync(tmp)
            size = tmp.stat().st_size
            os.replace(tmp, target)
            _fsync(target.parent, os.O_DIRECTORY)
            return size
        except BaseException as err:
            tmp.unlink(missing_ok=True)
            if isinstance(err, MonitorError):
                raise CorralError(f"cannot write the state to {target}: {err.message}") from err
            raise

    async def load_state(self, source: Path, ignore_shared: bool = False) -> None:
        """:raises MonitorError: when QEMU refuses the state."""
        await self._hand_over(os.open(source, os.O_RDONLY | os.O_CLOEXEC), ignore_shared)
        await self.monitor.execute("migrate-incoming", {"uri": f"fd:{STATE_FD}"})
        await self.monitor.wait_migration()

    async def cancel_save(self) -> None:
        await self.monitor.execute("migrate_cancel")

    # -- snapshots ---------------------------------------------------------------------------
    async def _job(self, command: str, args: dict[str, Any], timeout: float = 300.0) -> None:
        """Run a QMP job command and wait for it to conclude.

        :raises CorralError: with QEMU's reason when the job fails.
        """
        job_id = f"crl-{uuid.uuid4().hex[:8]}"
        await self.monitor.execute(command, {"job-id": job_id, **args})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.002
        while True:
            jobs = await self.monitor.execute("query-jobs")
            job = next((j for j in jobs if j.get("id") == job_id), None)
            if job is None or job.get("status") == "concluded":
                break
            if loop.time() > deadline:
                raise Timeout(f"{command} still runs after {timeout:g} s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        if job is not None:
            with contextlib.suppress(CorralError):
                await self.monitor.execute("job-dismiss", {"id": job_id})
            if job.get("error"):
                raise CorralError(f"{command} failed: {job['error']}")

    async def snapshot_save(self, tag: str, vmstate: str, devices: list[str]) -> None:
        await self._job("snapshot-save", {"tag": tag, "vmstate": vmstate, "devices": devices})

    async def snapshot_load(self, tag: str, vmstate: str, devices: list[str]) -> None:
        await self._job("snapshot-load", {"tag": tag, "vmstate": vmstate, "devices": devices})

    async def snapshot_delete(self, tag: str, devices: list[str]) -> None:
        await self._job("snapshot-delete", {"tag": tag, "devices": devices})

    # -- devices -----------------------------------------------------------------------------
    async def add_disk(self, disk: DiskSpec, node: str) -> None:
        self.confinement.hand_over([disk.path])
        await self.monitor.execute("blockdev-add", qargv.disk_blockdev(disk, node))
        try:
            await self.monitor.execute("device_add",
                                       qargv.disk_device(disk, node, "pci", disk.port))
        except CorralError:
            await self.monitor.execute("blockdev-del", {"node-name": node})
            raise

    async def _unplug(self, device: str, timeout: float) -> None:
        gone = self.watch_event(DEVICE_DELETED, lambda d: d.get("device") == device)
        try:
            await self.monitor.execute("device_del", {"id": device})
        except MonitorError as err:  # none: the guest let go after an earlier request timed out
            if err.error_class == "DeviceNotFound":
                return
            raise
        try:
            await asyncio.wait_for(gone, timeout)
        except TimeoutError as err:
            raise Timeout(f"the guest in '{self.name}' did not release {device} in "
                          f"{timeout:g} s") from err

    async def remove_disk(self, node: str, timeout: float) -> None:
        if timeout <= 0:  # taken back before the guest could use it
            await self.monitor.execute("device_del", {"id": f"vd-{node}"})
            return
        await self._unplug(f"vd-{node}", timeout)
        await self.monitor.execute("blockdev-del", {"node-name": node})

    async def resize_disk(self, node: str, size: int) -> None:
        await self.monitor.execute("block_resize", {"node-name": node, "size": size})

    async def set_io_limits(self, node: str, iops: int, bps: int, pci: bool) -> None:
        # on PCI the limits sit on the virtio backend, the child of the PCI proxy device
        device = f"/machine/peripheral/vd-{node}" + ("/virtio-backend" if pci else "")
        await self.monitor.execute("block_set_io_throttle", {
            "id": device, "iops": iops, "iops_rd": 0, "iops_wr": 0,
            "bps": bps, "bps_rd": 0, "bps_wr": 0})

    async def block_stats(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for dev in await self.monitor.execute("query-blockstats", timeout=2):
            node = dev.get("node-name") or str(dev.get("qdev", "")).removeprefix("vd-")
            s = dev.get("stats", {})
            out[node] = {k: int(s.get(k, 0)) for k in
                         ("rd_bytes", "wr_bytes", "rd_operations", "wr_operations")}
        return out

    async def add_nic(self, nic: NicSpec, position: int) -> None:
        tap_fd = None
        if nic.mode == "network" and nic.ifname:  # the daemon opens the tap, QEMU gets it
            tap_fd = f"tap-{nic.device(position)}"
            fd = open_tap(nic.ifname)
            try:
                await self.monitor.send_fd(fd, tap_fd)
            finally:
                os.close(fd)
        netdev = qargv.nic_netdev(nic, position, tap_fd)
        await self.monitor.execute("netdev_add", netdev)
        try:
            await self.monitor.execute("device_add", qargv.nic_device(nic, position, "pci"))
        except CorralError:
            await self.monitor.execute("netdev_del", {"id": netdev["id"]})
            raise

    async def remove_nic(self, nic: NicSpec, position: int, timeout: float) -> None:
        await self._unplug(nic.device(position), timeout)
        await self.monitor.execute("netdev_del", {"id": qargv.nic_netdev(nic, position)["id"]})

    async def vcpu_threads(self) -> list[int]:
        return [int(cpu["thread-id"]) for cpu in await self.monitor.execute("query-cpus-fast")
                if "thread-id" in cpu]


class QemuDriver:
    """Starts QEMU processes, each confined as :class:`~.confine.Confinement` says, and
    re-adopts them after a daemon restart."""

    def __init__(self, accel: str, tsc_khz: int | None = None,
                 confinement: Confinement | None = None) -> None:
        self.accel, self.tsc_khz = accel, tsc_khz
        self.confinement = confinement or Confinement()
        # QEMUs started or adopted, not known to have ended, and launches: the guard stands
        self.pids: set[int] = set()
        self.launching = 0
        self.known = confine.KnownFacts()  # what confines each of them (read once)

    def _gone(self, pid: int) -> None:
        self.pids.discard(pid)
        self.settle_guard()

    def settle_guard(self, at_once: bool = False) -> None:
        """Lower the host guard once no QEMU of ours runs or starts (see Confinement.settle)."""
        self.confinement.settle(self._idle, at_once)

    def _idle(self) -> bool:
        self.pids = {pid for pid in self.pids if start_time(pid) is not None}
        self.known.keep(self.pids)
        return not self.pids and not self.launching

    def cleanup(self, run_dir: Path, keep_dir: bool = False, orphan: bool = False) -> None:
        if orphan:
            end_orphan(qargv.RunPaths(run_dir))
        qargv.RunPaths(run_dir).remove(keep_dir)

    end_stray = staticmethod(_end_stray)

    def confinement_of(self, pid: int | None) -> dict[str, Any] | None:
        """What confines the QEMU ``pid`` (the kernel's view); None: the daemon's settings."""
        return self.confinement.describe() if pid is None else self.known.of(pid, pid in self.pids)

    def _machine(self, spec: VMSpec, run: qargv.RunPaths, proc: Process,
                 on_event: EventHandler) -> QemuMachine:
        holder: list[QemuMachine] = []

        def handler(event: str, data: dict[str, Any]) -> None:
            if holder:
                holder[0].deliver(event, data)
            on_event(event, data)

        machine = QemuMachine(spec.name, proc, Monitor(spec.name, handler),
                              GuestAgent(spec.name, run.agent) if spec.agent else None,
                              self.confinement, lambda: self._gone(proc.pid))
        holder.append(machine)
        return machine

    async def launch(self, spec: VMSpec, run_dir: Path, serial_log: Path,
                     on_event: EventHandler, options: LaunchOptions | None = None
                     ) -> QemuMachine:
        opts = options or LaunchOptions()
        run = qargv.RunPaths(run_dir)
        run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.cleanup(run_dir, keep_dir=True)
        accel = self.accel if spec.arch == os.uname().machine else "tcg"  # KVM: own arch only
        self.launching += 1
        self.confinement.raise_guard()
        try:
            machine = await self._launch(spec, run, serial_log, accel, opts, on_event)
            self.pids.add(machine.pid)
            return machine
        finally:
            self.launching -= 1
            self.settle_guard()

    async def _launch(self, spec: VMSpec, run: qargv.RunPaths, serial_log: Path, accel: str,
                      opts: LaunchOptions, on_event: EventHandler) -> QemuMachine:
        jail = self.confinement.jail(spec, serial_log, opts.ram, tcg=accel.startswith("tcg"))
        with listening(run.qmp, run.console, run.agent if spec.agent else None) as fds, \
                opened_taps(spec) as taps:
            argv = qargv.build(spec, run, serial_log, accel, self.tsc_khz, ram=opts.ram,
                               incoming=opts.incoming, listeners=fds,
                               sandbox=self.confinement.sandbox, taps=taps)
            if opts.hold:
                argv.append("-S")
            argv += opts.extra
            passed = [fd for fd in (fds.qmp, fds.console, fds.agent) if fd is not None]
            proc = await launch(argv, run, passed + list(taps.values()), jail)
        machine = self._machine(spec, run, proc, on_event)
        try:
            await machine.monitor.connect(run.qmp)
        except BaseException as err:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, 9)
            code = reap(proc.pid)
            await machine.monitor.close()
            if isinstance(err, CorralError):
                raise LaunchFailed(argv, code if code is not None else 1,
                                   log_tail(run.log) or err.message,
                                   what="QEMU would not start") from err
            raise
        return machine

    async def adopt(self, spec: VMSpec, run_dir: Path, pid: int | None, started: int | None,
                    on_event: EventHandler) -> QemuMachine | None:
        run = qargv.RunPaths(run_dir)
        if pid is None:
            with contextlib.suppress(OSError, ValueError):
                pid = int(run.pidfile.read_text().strip())
        proc = Process.adopt(pid, started, qargv.monitor(run, spec)) if pid is not None else None
        if proc is None:
            return None
        machine = self._machine(spec, run, proc, on_event)
        try:
            await machine.monitor.connect(run.qmp)
        except CorralError:
            await machine.monitor.close()
            raise
        self.pids.add(proc.pid)
        await self.confinement.guard()
        return machine
