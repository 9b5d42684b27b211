"""The VM manager: one method per use case.

Every operation follows the same shape: check the transition against the one table in
:mod:`corral.domain.states`, do the work, commit the new state last, and record an event in
the same transaction. A failed operation puts the VM back where it was and removes what it
made. Operations on one VM are serialised by a per-VM lock; QMP events and process exits
arrive from the event loop and update the state at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from corral.config import Paths
from corral.domain import specs as sp
from corral.domain.states import LIVE, OPERATIONS, State, allowed, check, from_qmp_status
from corral.engine import accel as accel_mod
from corral.engine.qemu import argv as qargv
from corral.engine.qemu.guest_agent import GuestAgent
from corral.engine.qemu.process import Exit, Process, become_subreaper, launch
from corral.engine.qemu.qmp import Monitor
from corral.errors import (
    AgentError,
    AlreadyExists,
    CorralError,
    InvalidSpec,
    InvalidState,
    NotFound,
    Timeout,
)
from corral.host import cgroups
from corral.images import catalog
from corral.service import disks, host, netrestart, nics, storage
from corral.service.networks import Networks
from corral.service.scheduling import Scheduler
from corral.store.db import Store, VMRecord

log = logging.getLogger(__name__)
READY_TIMEOUT = 120.0


@dataclass
class Runtime:
    """What the daemon holds for one live VM."""

    process: Process
    monitor: Monitor
    agent: GuestAgent | None
    ready_task: asyncio.Task[None] | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    expected_exit: str | None = None  # set when Corral (or the guest) asked QEMU to end
    exit_state: State = State.STOPPED  # where an expected exit leaves the VM
    reset: asyncio.Event = field(default_factory=asyncio.Event)
    waiters: list[tuple[str, Callable[[dict[str, Any]], bool], asyncio.Future[None]]] = field(
        default_factory=list)

    def watch_event(self, event: str, match: Callable[[dict[str, Any]], bool]
                    ) -> asyncio.Future[None]:
        """A future that completes when QEMU sends ``event`` with data that ``match``es."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append((event, match, fut))
        return fut

    def deliver(self, event: str, data: dict[str, Any]) -> None:
        for waiter in list(self.waiters):
            name, match, fut = waiter
            if name == event and not fut.done() and match(data):
                fut.set_result(None)
            if fut.done():
                self.waiters.remove(waiter)


class Manager:
    """The in-process VM manager. The daemon serves it; tests may drive it directly."""

    def __init__(self, paths: Paths | None = None) -> None:
        self.paths = paths or Paths.from_env()
        self.accel = accel_mod.detect()
        self.tsc_khz = accel_mod.tsc_khz()
        self.store: Store | None = None
        self._sched: Scheduler | None = None
        self.net = Networks(self)
        self._rt: dict[str, Runtime] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Future[None]] = set()
        from corral.service import slices

        self.vms = slices.VMs(self)
        self.snapshots = slices.Snapshots(self)
        self.disks = slices.Disks(self)
        self.guest = slices.Guest(self)
        self.images = slices.Images(self)
        self.host = slices.Host(self)
        self.networks = slices.Networks(self)
        self.routers = slices.Routers(self)

    # ----- life of the manager -------------------------------------------------------------
    async def open(self) -> None:
        """Open the store and re-adopt every VM whose QEMU is still alive."""
        become_subreaper()
        for d in (self.paths.home, self.paths.images, self.paths.run):
            d.mkdir(parents=True, exist_ok=True)
        self.store = Store(self.paths.db)
        for rec in self.db.list_vms():
            await self._reconcile(rec)
        await netrestart.reconcile(self)  # before the queue may start VMs on networks
        self._sched = Scheduler(self)
        self.sched.load()
        self.sched.dispatch()

    async def close(self) -> None:
        """Let go of every VM without stopping it: they outlive the daemon."""
        for rt in list(self._rt.values()):
            if rt.ready_task:
                rt.ready_task.cancel()
            rt.process.unwatch()
            await rt.monitor.close()
            if rt.agent:
                await rt.agent.close()
        self._rt.clear()
        if self._sched is not None:
            await self._sched.close()
        if self.store:
            self.store.close()

    @property
    def sched(self) -> Scheduler:
        assert self._sched is not None, "Manager.open() was not called"
        return self._sched

    @property
    def db(self) -> Store:
        assert self.store is not None, "Manager.open() was not called"
        return self.store

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _get(self, name: str) -> VMRecord:
        rec = self.db.get_vm(name)
        if rec is None:
            raise NotFound(f"no VM named '{name}'; see 'corral list'")
        return rec

    def _set(self, rec: VMRecord, state: State, kind: str | None = None, wait: bool = True,
             **detail: Any) -> None:
        if rec.state != state and not allowed(rec.state, state):
            raise InvalidState(rec.name, f"move to {state.value}", rec.state.value,
                               [s.value for s in State if allowed(s, state)])
        rec.state = state
        self.db.update_vm(rec, kind or state.value, detail, wait=wait)

    # ----- create ---------------------------------------------------------------------------
    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """Define a VM (it does not boot).

        :raises InvalidSpec: a field is wrong (named in the error).
        :raises AlreadyExists: the name is taken.
        """
        req = sp.parse_create(body)
        memory = sp.validate_against_host(req, host.facts())
        async with self._lock(req.name):
            if self.db.get_vm(req.name) is not None:
                raise AlreadyExists(f"a VM named '{req.name}' exists; pick another name or "
                                    f"'corral destroy {req.name}'")
            spec = self._resolve(req, memory)
            spec.sched = sp.scheduling(req, host.facts())
            vm_dir = self.paths.vm_dir(req.name)
            if vm_dir.exists():  # left by a crash between mkdir and commit
                shutil.rmtree(vm_dir)
            vm_dir.mkdir(parents=True)
            try:
                spec.disks = await storage.prepare_disks(req.disks, vm_dir)
                image = catalog.find(self.paths, spec.image) if spec.image else None
                if image is not None and image.disk is not None:
                    root = await storage.make_root(image.disk, vm_dir, image.root_bus,
                                                   boot=spec.kernel is None)
                    spec.disks.insert(0, root)
                if req.user_data is not None or req.ssh_keys or req.hostname:
                    spec.disks.append(storage.make_seed(vm_dir, req))
                spec.vmstate = await storage.make_vmstate(vm_dir)
                nics.plan_nics(self, spec)  # no await from here to add_vm: addresses stay ours
                rec = VMRecord(name=req.name, uid=str(uuid.uuid4()), spec=spec,
                               state=State.DEFINED)
                self.db.add_vm(rec)
            except BaseException:
                shutil.rmtree(vm_dir, ignore_errors=True)
                raise
        return self._view(rec)

    def _resolve(self, req: sp.VMCreate, memory: int) -> sp.VMSpec:
        """Kernel, initrd and command line come from ``--kernel`` … when given, else from the
        image; an image with a disk gives the VM an overlay of it either way."""
        image = None
        if req.image or not req.kernel:
            default = sp.DEFAULT_IMAGE if req.arch in (None, "x86_64") else "tiny-arm64"
            image = catalog.resolve(self.paths, req.image or default)
        image_name, arch = (image.name, image.arch) if image else (None, req.arch or "x86_64")
        if req.arch is not None and req.arch != arch:
            raise InvalidSpec("arch", f"image '{image_name}' is {arch}, not {req.arch}; pick an "
                                      f"{req.arch} image (e.g. tiny-arm64)")
        if arch not in sp.MACHINES:
            raise InvalidSpec("arch", f"{arch} guests are not supported")
        manifest = image.manifest if image else {}
        machine = req.machine or manifest.get("machine") or sp.MACHINES[arch][0]
        if machine not in sp.MACHINES[arch]:
            raise InvalidSpec("machine", f"{machine} is not an {arch} machine; use "
                                         + " or ".join(sp.MACHINES[arch]))
        cpu_model = req.cpu_model or manifest.get("cpu") or "max"
        agent = image.agent if image else True
        if req.kernel:
            kernel = Path(req.kernel).expanduser()
            if not kernel.is_file():
                raise InvalidSpec("kernel", f"no file '{req.kernel}'; give the path of a kernel")
            initrd = Path(req.initrd).expanduser() if req.initrd else None
            if initrd and not initrd.is_file():
                raise InvalidSpec("initrd", f"no file '{req.initrd}'; give the path of an initrd")
            kpath: str | None = str(kernel.absolute())
            ipath = str(initrd.absolute()) if initrd else None
            cmdline = req.cmdline or "console=ttyS0 panic=-1"
        else:
            assert image is not None
            kpath = str(image.kernel) if image.kernel else None
            ipath = str(image.initrd) if image.initrd else None
            cmdline = req.cmdline or image.cmdline
        nic_specs = [sp.NicSpec(mode=n.mode or ("network" if n.network else "user"),
                                mac=(n.mac or sp.new_mac()).lower(), network=n.network,
                                ip=n.ip, fixed_ip=n.ip is not None, hostfwd=n.hostfwd)
                     for n in (req.nics if req.nics is not None else [sp.NicRequest()])]
        return sp.VMSpec(name=req.name, arch=cast(sp.Arch, arch), image=image_name,
                         cpus=req.cpus,
                         memory_bytes=memory, kernel=kpath, initrd=ipath, cmdline=cmdline,
                         machine=cast(sp.Machine, machine), cpu_model=cpu_model, disks=[],
                         nics=nic_specs,
                         agent=agent)

    # ----- start ----------------------------------------------------------------------------
    async def start(self, name: str, wait: bool = False, timeout: float = READY_TIMEOUT,
                    queue: bool = True) -> dict[str, Any]:
        """Boot a defined or stopped VM, or queue it when the host is full (it then starts
        by itself when capacity frees). With ``wait``, return once the guest agent answers,
        waiting in the queue first if need be.

        On failure the VM is back in its previous state and nothing it made is left.

        :raises InvalidState: the VM is not defined, stopped or crashed.
        :raises InvalidSpec: the VM is larger than the whole host.
        :raises NoCapacity: it does not fit now and ``queue`` is false.
        :raises LaunchFailed: QEMU would not start (its own words are in the message).
        :raises Timeout: with ``wait``, the guest was not ready in time (it keeps running).
        """
        if self._get(name).state == State.SAVED:  # like a managed save: start resumes it
            return await self.restore(name, wait, timeout)
        t0 = time.monotonic()
        async with self._lock(name):
            rec = self._get(name)
            check(name, "start", rec.state)
            s = rec.spec.sched
            self.db.update_vm(rec, "requested", {
                "owner": s.owner, "priority": s.priority, "expected_runtime": s.expected_runtime,
                "cpus": rec.spec.cpus, "memory": rec.spec.memory_bytes})
            if self.sched.admit(rec, queue):
                await self._boot(rec, rec.state)
        if wait:
            await self._wait_admitted(name, timeout)
            await self.wait_ready(name, max(0.1, timeout - (time.monotonic() - t0)))
        return self._view(self._get(name))

    async def _boot(self, rec: VMRecord, before: State) -> None:
        """Launch an admitted VM (its capacity is reserved): a cold boot, or the resume of a
        warm-start template. On failure the reservation is released and the VM is
        ``before`` again."""
        run = qargv.RunPaths(self.paths.run_dir(rec.name))
        self._set(rec, State.STARTING)
        try:
            if rec.spec.warm_template:
                from corral.service import warm

                await warm.resume_template(self, rec)
            else:
                await self._launch(rec, run)
        except BaseException as err:
            rt = self._rt.pop(rec.name, None)
            if rt is not None and rt.process.alive:
                rt.expected_exit = "start failed"
                await self._kill(rt)
            self._cleanup_run(run)
            self.sched.release(rec.name)
            rec.state = before
            rec.pid = rec.pid_start = None
            rec.exit_reason = f"start failed: {err}"
            self.db.update_vm(rec, "start_failed", {"error": str(err)})
            raise
        if rec.spec.sched.timeslice:
            self.sched.poke()

    async def _start_admitted(self, name: str) -> None:
        """Start a VM the queue has just admitted (its capacity is reserved)."""
        async with self._lock(name):
            rec = self.db.get_vm(name)
            if rec is None or rec.state != State.QUEUED:
                self.sched.release(name)  # cancelled meanwhile
                return
            with contextlib.suppress(CorralError):  # recorded on the VM as start_failed
                await self._boot(rec, State.DEFINED if rec.started_at is None
                                 else State.STOPPED)

    async def _wait_admitted(self, name: str, timeout: float) -> None:
        """Wait while the VM is queued (or starting).

        :raises Timeout: when it is still queued after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while (rec := self._get(name)).state in (State.QUEUED, State.STARTING):
            if time.monotonic() > deadline:
                raise Timeout(f"VM '{name}' is still {rec.state.value} after {timeout:g} s; "
                              "see 'corral queue'")
            await asyncio.sleep(0.05)

    async def _launch(self, rec: VMRecord, run: qargv.RunPaths) -> None:
        rt = await self._spawn(rec, run)
        for i, disk in enumerate(rec.spec.disks):
            await disks.apply_limits(rt, disk, disk.node(i), rec.spec.machine == "q35")
        await self.sched.place_process(rec, rt.process.pid)
        rec.started_at, rec.ready_at, rec.exit_reason = time.time(), None, None
        self._set(rec, State.RUNNING, "started", pid=rec.pid)
        self._watch_ready(rec.name, self._rt[rec.name])

    async def _spawn(self, rec: VMRecord, run: qargv.RunPaths, incoming: bool = False,
                     extra: list[str] | None = None, ram: qargv.RamFile | None = None
                     ) -> Runtime:
        """Start QEMU for ``rec``, connect its monitor and watch its exit. With ``incoming``
        it waits for a migration stream (``-incoming defer``) instead of booting."""
        run.dir.mkdir(parents=True, exist_ok=True)
        self._cleanup_run(run, keep_dir=True)
        await nics.plug(self, rec)  # the taps of its network NICs, which QEMU opens by name
        serial = self.paths.vm_dir(rec.name) / "serial.log"
        # KVM runs only the host's own architecture; other guests are always emulated
        accel = self.accel.name if rec.spec.arch == os.uname().machine else "tcg"
        argv = qargv.build(rec.spec, run, serial, accel, self.tsc_khz, ram=ram)
        if incoming:
            argv += ["-incoming", "defer"]
        argv += extra or []
        try:
            proc = await launch(argv, run.pidfile)
        except BaseException:
            nics.unplug(self, rec.name)
            raise
        rt = Runtime(proc, Monitor(rec.name, lambda ev, data: self._on_event(rec.name, ev,
                                                                             data)),
                     GuestAgent(rec.name, run.agent) if rec.spec.agent else None)
        try:
            await rt.monitor.connect(run.qmp)
        except BaseException:
            proc.signal(9)
            await proc.wait(5)
            nics.unplug(self, rec.name)
            raise
        self._rt[rec.name] = rt
        proc.watch(lambda exit_: self._on_exit(rec.name, rt, exit_))
        rec.pid, rec.pid_start, rec.accel = proc.pid, proc.started, self.accel.name
        return rt

    def _watch_ready(self, name: str, rt: Runtime, fresh: bool = False,
                     on_ready: Callable[[Manager, str, Runtime], Awaitable[None]] | None = None,
                     then: Callable[[Manager, str, Runtime], Awaitable[None]] | None = None,
                     ) -> None:
        """Watch in the background until the guest agent answers, then mark the VM ready.
        ``fresh``: the guest rebooted, so the old agent channel is dropped first."""
        if rt.agent is None:
            return
        agent = rt.agent

        async def watch() -> None:
            if fresh:
                await agent.close()
            try:
                await agent.wait_ready(READY_TIMEOUT)
            except Timeout:
                log.warning("guest agent of %s did not answer in %s s", name, READY_TIMEOUT)
                return
            if on_ready is not None:
                await on_ready(self, name, rt)
            rec = self.db.get_vm(name)
            if rec is not None and self._rt.get(name) is rt:
                rec.ready_at = time.time()
                self.db.update_vm(rec, "ready", {"boot_seconds": self._boot_seconds(rec)})
                rt.ready.set()
                if then is not None:
                    self._background(then(self, name, rt))

        rt.ready.clear()
        if rt.ready_task:
            rt.ready_task.cancel()
        rt.ready_task = asyncio.create_task(watch(), name=f"ready-{name}")

    async def wait_ready(self, name: str, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
        """Wait until the guest agent of a running VM answers (a queued VM is waited for
        through the queue first).

        :raises Timeout: when it has not answered after ``timeout`` seconds.
        :raises InvalidState: when the VM is not running or has no guest agent.
        """
        t0 = time.monotonic()
        if self._get(name).state in (State.QUEUED, State.STARTING):
            await self._wait_admitted(name, timeout)
            timeout = max(0.1, timeout - (time.monotonic() - t0))
        rt = self._rt.get(name)
        rec = self._get(name)
        if rt is None or rt.agent is None:
            raise InvalidState(name, "wait for", rec.state.value, ["running with an agent"])
        exited = asyncio.ensure_future(rt.process.wait())
        ready = asyncio.ensure_future(rt.ready.wait())
        try:
            done, _ = await asyncio.wait({exited, ready}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
            ready.cancel()
        if ready not in done:
            rec = self._get(name)
            if exited in done:
                raise InvalidState(name, "wait for", rec.state.value, ["running"])
            raise Timeout(f"VM '{name}' is running but its guest agent did not answer in "
                          f"{timeout:g} s; see 'corral logs {name}'")
        return self._view(self._get(name))

    async def save(self, name: str, file: str | None = None) -> dict[str, Any]:
        """See :func:`corral.service.saved.save`."""
        from corral.service import saved

        return await saved.save(self, name, file)

    async def restore(self, name: str, wait: bool = False,
                      timeout: float = READY_TIMEOUT) -> dict[str, Any]:
        """See :func:`corral.service.saved.restore`."""
        from corral.service import saved

        return await saved.restore(self, name, wait, timeout)

    # ----- pause / resume -------------------------------------------------------------------
    async def pause(self, name: str) -> dict[str, Any]:
        """:raises InvalidState: unless the VM is running."""
        return await self._qmp_op(name, "pause", "stop", State.PAUSED)

    async def resume(self, name: str) -> dict[str, Any]:
        """:raises InvalidState: unless the VM is paused."""
        self.sched.sliced_out.discard(name)
        return await self._qmp_op(name, "resume", "cont", State.RUNNING)

    async def _qmp_op(self, name: str, op: str, command: str, target: State) -> dict[str, Any]:
        async with self._lock(name):
            rec = self._get(name)
            check(name, op, rec.state)
            await self._runtime(rec).monitor.execute(command)
            if rec.state != target:  # QEMU knows it too: adoption re-reads it after a crash
                self._set(rec, target, wait=False)
            return self._view(rec)

    def _runtime(self, rec: VMRecord) -> Runtime:
        rt = self._rt.get(rec.name)
        if rt is None:
            raise CorralError(f"VM '{rec.name}' is {rec.state.value} but the daemon holds no "
                              "process for it")
        return rt

    # ----- shutdown / stop / reboot ---------------------------------------------------------
    async def shutdown(self, name: str, timeout: float = 60.0) -> dict[str, Any]:
        """Ask the guest to power off (guest agent if it answers, else the ACPI power
        button); force it off after ``timeout`` seconds.

        :raises InvalidState: unless the VM is running or paused.
        """
        async with self._lock(name):
            rec = self._get(name)
            check(name, "shutdown", rec.state)
            rt = self._runtime(rec)
            was_paused = rec.state == State.PAUSED
            self._set(rec, State.STOPPING, "shutdown_requested")
            rt.expected_exit = "shut down"
            how = "acpi"
            if rt.agent is not None and rt.ready.is_set() and not was_paused:
                try:
                    await rt.agent.execute("guest-shutdown", {"mode": "powerdown"}, timeout=5,
                                           expect_reply=False)
                    how = "agent"
                except (AgentError, Timeout):
                    how = "acpi"
            if how == "acpi":
                with contextlib.suppress(CorralError):
                    if was_paused:
                        await rt.monitor.execute("cont")
                    await rt.monitor.execute("system_powerdown")
            if not await rt.process.wait(timeout):
                rt.expected_exit = f"forced off after the guest ignored a {timeout:g} s shutdown"
                await self._kill(rt)
            return self._view(self._get(name))

    async def stop(self, name: str, force: bool = True, timeout: float = 60.0) -> dict[str, Any]:
        """Stop a VM: at once with ``force`` (like pulling the plug), else as :meth:`shutdown`.

        :raises InvalidState: unless the VM has a running QEMU.
        """
        if not force and self._get(name).state != State.QUEUED:
            return await self.shutdown(name, timeout)
        async with self._lock(name):
            rec = self._get(name)
            check(name, "stop", rec.state)
            if rec.state == State.QUEUED:  # stopping a queued VM cancels its request
                self.sched.cancel(rec, State.DEFINED if rec.started_at is None
                                  else State.STOPPED)
                return self._view(rec)
            rt = self._runtime(rec)
            rt.expected_exit = "forced off"
            await self._kill(rt)
            return self._view(self._get(name))

    async def _kill(self, rt: Runtime) -> None:
        """End QEMU: ``quit`` (flushes its disks), then SIGKILL if it lingers."""
        with contextlib.suppress(CorralError):
            await rt.monitor.execute("quit", timeout=2)
        if not await rt.process.wait(2):
            rt.process.signal(9)
            await rt.process.wait(5)

    async def reboot(self, name: str, wait: bool = False,
                     timeout: float = READY_TIMEOUT) -> dict[str, Any]:
        """Reboot the guest: through the agent if it answers, else a hard reset.

        :raises InvalidState: unless the VM is running.
        """
        async with self._lock(name):
            rec = self._get(name)
            check(name, "reboot", rec.state)
            rt = self._runtime(rec)
            rt.reset.clear()
            done = False
            if rt.agent is not None and rt.ready.is_set():
                try:
                    await rt.agent.execute("guest-shutdown", {"mode": "reboot"}, timeout=5,
                                           expect_reply=False)
                    done = True
                except (AgentError, Timeout):
                    done = False
            if done:
                try:
                    await asyncio.wait_for(rt.reset.wait(), 15)
                except TimeoutError:
                    done = False
            if not done:
                await rt.monitor.execute("system_reset")
                self._on_reset(name, rt)
            self.db.update_vm(rec, "rebooted", {})
        if wait:
            await self.wait_ready(name, timeout)
        return self._view(self._get(name))

    # ----- destroy --------------------------------------------------------------------------
    async def destroy(self, name: str) -> None:
        """Stop the VM if it runs and remove everything Corral made for it."""
        async with self._lock(name):
            if self._get(name).state == State.QUEUED:
                self.sched.cancel(self._get(name), State.DEFINED)
            rt = self._rt.get(name)
            if rt is not None:
                rt.expected_exit = "destroyed"
                await self._kill(rt)
            run = qargv.RunPaths(self.paths.run_dir(name))
            self._cleanup_run(run)
            for disk in self._get(name).spec.disks:
                if disk.name:  # a named disk outlives the VM; it is only detached
                    self.db.set_disk_vm(disk.name, None)
            shutil.rmtree(self.paths.vm_dir(name), ignore_errors=True)
            spec = self._get(name).spec
            self.db.delete_vm(name)
            await nics.forget(self, name, spec)
        self._locks.pop(name, None)

    # ----- events from QEMU -----------------------------------------------------------------
    def _on_event(self, name: str, event: str, data: dict[str, Any]) -> None:
        rt = self._rt.get(name)
        rec = self.db.get_vm(name)
        if rt is None or rec is None:
            return
        rt.deliver(event, data)
        busy = self._lock(name).locked()  # a Corral operation sets the state it causes itself
        if event == "STOP" and rec.state == State.RUNNING and not busy:
            self._set(rec, State.PAUSED, "paused", by="qemu")
        elif event == "RESUME" and rec.state == State.PAUSED and not busy:
            self._set(rec, State.RUNNING, "resumed", by="qemu")
        elif event == "SHUTDOWN":
            reason = str(data.get("reason", ""))
            if rt.expected_exit is None:
                rt.expected_exit = ("guest powered off" if data.get("guest")
                                    else f"QEMU shut down ({reason})")
            if reason == "guest-panic":
                rt.expected_exit = None
            if rec.state in (State.RUNNING, State.PAUSED):
                self._set(rec, State.STOPPING, "shutdown", reason=reason)
        elif event == "RESET":
            self._on_reset(name, rt)
        elif event == "GUEST_PANICKED":
            rt.expected_exit = None
            rec.exit_reason = "guest kernel panicked"
            rt.process.signal(9)

    def _on_reset(self, name: str, rt: Runtime) -> None:
        rec = self.db.get_vm(name)
        if rec is None:
            return
        rt.reset.set()
        rec.ready_at = None
        rec.started_at = time.time()
        self.db.update_vm(rec, "reset", {})
        self._watch_ready(name, rt, fresh=True)

    def _on_exit(self, name: str, rt: Runtime, exit_: Exit) -> None:
        if self._rt.get(name) is not rt:
            return
        del self._rt[name]
        if rt.ready_task:
            rt.ready_task.cancel()
        cgroups.remove(name)
        self.sched.release(name)
        self._background(self._close_runtime(rt))
        self._cleanup_run(qargv.RunPaths(self.paths.run_dir(name)), keep_dir=False)
        nics.unplug(self, name)
        rec = self.db.get_vm(name)
        if rec is None:
            return
        rec.pid = rec.pid_start = None
        rec.ready_at = None
        if rt.expected_exit is not None:
            rec.exit_reason = rt.expected_exit
            self._set(rec, rt.exit_state, rt.exit_state.value, reason=rt.expected_exit)
        else:
            rec.exit_reason = rec.exit_reason or f"QEMU {exit_.describe()}"
            self._set(rec, State.CRASHED, "crashed", reason=rec.exit_reason)

    async def _close_runtime(self, rt: Runtime) -> None:
        await rt.monitor.close()
        if rt.agent:
            await rt.agent.close()

    def _cleanup_run(self, run: qargv.RunPaths, keep_dir: bool = False) -> None:
        for path in (run.qmp, run.agent, run.console, run.pidfile):
            path.unlink(missing_ok=True)
        if not keep_dir:
            with contextlib.suppress(OSError):
                run.dir.rmdir()

    def _background(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ----- adoption after a daemon restart --------------------------------------------------
    async def _reconcile(self, rec: VMRecord) -> None:
        run = qargv.RunPaths(self.paths.run_dir(rec.name))
        proc = None
        pid = rec.pid
        if pid is None:
            with contextlib.suppress(OSError, ValueError):
                pid = int(run.pidfile.read_text().strip())
        if pid is not None:
            proc = Process.adopt(pid, rec.pid_start, str(run.qmp))
        if proc is None:
            if rec.state in LIVE:
                stopping = rec.state == State.STOPPING
                rec.pid = rec.pid_start = None
                rec.ready_at = None
                rec.exit_reason = ("stopped while the daemon was down" if stopping
                                   else "QEMU was gone when the daemon started")
                self._set(rec, State.STOPPED if stopping or rec.state == State.STARTING
                          else State.CRASHED)
            self._cleanup_run(run)
            return
        rt = Runtime(proc, Monitor(rec.name, lambda ev, d: self._on_event(rec.name, ev, d)),
                     GuestAgent(rec.name, run.agent) if rec.spec.agent else None)
        try:
            await rt.monitor.connect(run.qmp)
            status = await rt.monitor.execute("query-status")
        except CorralError as err:
            log.warning("cannot adopt %s: %s", rec.name, err)
            await rt.monitor.close()
            return
        self._rt[rec.name] = rt
        proc.watch(lambda exit_: self._on_exit(rec.name, rt, exit_))
        rec.pid, rec.pid_start = proc.pid, proc.started
        state = from_qmp_status(str(status["status"]))
        if state not in (State.RUNNING, State.PAUSED):
            state = State.PAUSED
        if rec.state != state and allowed(rec.state, state):
            rec.state = state
        self.db.update_vm(rec, "adopted", {"pid": proc.pid})
        if rec.ready_at is not None:
            rt.ready.set()
        else:
            self._watch_ready(rec.name, rt)

    # ----- queries --------------------------------------------------------------------------
    @staticmethod
    def _boot_seconds(rec: VMRecord) -> float | None:
        if rec.ready_at is None or rec.started_at is None:
            return None
        return round(rec.ready_at - rec.started_at, 3)

    def _view(self, rec: VMRecord) -> dict[str, Any]:
        live = rec.state in LIVE and rec.name in self._rt
        run = self.paths.run_dir(rec.name)
        return {
            "name": rec.name,
            "uid": rec.uid,
            "state": rec.state.value,
            "ready": rec.ready_at is not None and live,
            "accel": rec.accel if live else None,
            "pid": rec.pid if live else None,
            "cpus": rec.spec.cpus,
            "memory_bytes": rec.spec.memory_bytes,
            "machine": rec.spec.machine,
            "arch": rec.spec.arch,
            "image": rec.spec.image,
            "uptime_seconds": round(time.time() - rec.started_at, 3)
            if live and rec.started_at else None,
            "boot_seconds": self._boot_seconds(rec) if live else None,
            "exit_reason": rec.exit_reason,
            "nics": [n.model_dump() for n in rec.spec.nics],
            "disks": [d.model_dump() for d in rec.spec.disks],
            "console_socket": str(run / "console.sock") if live else None,
            "serial_log": str(self.paths.vm_dir(rec.name) / "serial.log"),
            "created_at": rec.created_at,
            "operations": sorted(op for op, states in OPERATIONS.items()
                                 if rec.state in states),
        }

    async def get(self, name: str) -> dict[str, Any]:
        """One VM, with QEMU's own run state asked live over QMP.

        :raises NotFound: no VM of that name.
        """
        view = self._view(self._get(name))
        rt = self._rt.get(name)
        view["qemu_status"] = None
        if rt is not None:
            with contextlib.suppress(CorralError):
                status = await rt.monitor.execute("query-status", timeout=2)
                view["qemu_status"] = status["status"]
                per_node = await disks.stats(rt)
                for i, disk in enumerate(view["disks"]):
                    disk["stats"] = per_node.get(disk.get("id") or f"disk{i}")
        await nics.live(self, name, view)
        return view

    def list_vms(self) -> list[dict[str, Any]]:
        return [self._view(r) for r in self.db.list_vms()]

    def host_info(self) -> dict[str, Any]:
        info = host.info(self.accel)
        info["scheduler"] = self.sched.info()
        vms = self.db.list_vms()
        info.update(home=str(self.paths.home), vms=len(vms),
                    vms_running=sum(1 for r in vms if r.state in LIVE))
        return info

    def remove_image(self, name: str) -> None:
        """:raises InvalidState: while a VM uses it. :raises NotFound: no such image."""
        image = catalog.find(self.paths, name)
        if image is None:
            raise NotFound(f"no image named '{name}'; see 'corral image list'")
        users = sorted(r.name for r in self.db.list_vms() if r.spec.image == name)
        if users:
            raise InvalidState(name, "remove", f"used by {', '.join(users)}",
                               ["unused (destroy those VMs first)"], what="image")
        if image.dir.parent != self.paths.images:
            raise CorralError(f"image '{name}' lives in {image.dir.parent}, outside "
                              f"{self.paths.images}; remove it there")
        shutil.rmtree(image.dir)

    def queue(self) -> list[dict[str, Any]]:
        return self.sched.entries()

    def logs(self, name: str, offset: int = 0, limit: int = 1 << 20) -> dict[str, Any]:
        """The serial log from byte ``offset``: ``{"data", "offset"}`` (next offset)."""
        self._get(name)
        path = self.paths.vm_dir(name) / "serial.log"
        try:
            with path.open("rb") as f:
                if offset < 0:
                    f.seek(0, 2)
                    offset = max(0, f.tell() + offset)
                f.seek(offset)
                data = f.read(limit)
        except FileNotFoundError:
            data = b""
        return {"data": data.decode(errors="replace"), "offset": offset + len(data)}

    def events(self, since: int = 0, vm: str | None = None) -> list[dict[str, Any]]:
        return self.db.events(since, vm)
