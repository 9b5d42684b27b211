"""A VM's life: start (through admission), pause, resume, shut down, stop, reboot.

Each operation takes the VM's lock, checks its verb against the table, acts through the
engine driver and moves the state last through the runtime. A failed start puts the VM back
where it was and leaves nothing it made (the runtime's rollback guard).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

from corral.domain.states import State, check
from corral.errors import AgentError, CorralError, Timeout
from corral.service.runtime import READY_TIMEOUT, OnReady, VMRuntime

if TYPE_CHECKING:
    from corral.engine.driver import Machine
    from corral.service.scheduling import Scheduler
    from corral.store.db import VMRecord


DHCP_WAIT = 20.0  # seconds a guest may take for its leases before it is called ready anyway
BOOT_SLOT = 60.0  # the longest a cold boot holds its place among those booting at once


class BootGate:
    """How many cold boots run at once, each until its guest answers (or ``BOOT_SLOT``
    seconds, or its QEMU ends): a storm of boots crowded on a few cores costs each boot
    more CPU (caches, the guest's timers over a longer boot) than boots taken in turns.
    ``scheduler.boot_concurrency`` (default: one per host CPU under TCG, where a boot keeps
    its core busy; twice that under KVM, where boots mostly wait; 0: no limit).

    A storm of 40 tiny guests on 2 cores under TCG, one after the other in one hour:
    4 at once 133 s, 3 at once 138 s, 2 at once 126 s, each QEMU's CPU at its ready 1.15x,
    1.12x and 1.02x a single boot's (``bench/pool.py --only storm --boot-concurrency N``)."""

    def __init__(self, accel: str = "tcg") -> None:
        import os

        from corral import settings

        n = settings.value("scheduler.boot_concurrency")
        per_cpu = 1 if accel == "tcg" else 2
        self.limit = per_cpu * (os.cpu_count() or 1) if n is None else max(0, n)
        self._slots = asyncio.Semaphore(self.limit) if self.limit else None

    async def enter(self) -> None:
        if self._slots is not None:
            await self._slots.acquire()

    def leave(self) -> None:
        if self._slots is not None:
            self._slots.release()

    async def leave_when_booted(self, ready: asyncio.Event, exited: Any) -> None:
        """Give the place back once ``ready`` is set, ``exited`` (an awaitable) ends, or
        after ``BOOT_SLOT`` seconds."""
        waits = {asyncio.ensure_future(ready.wait()), asyncio.ensure_future(exited)}
        try:
            await asyncio.wait(waits, timeout=BOOT_SLOT, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
            self.leave()


def addresses_leased(rec: VMRecord) -> OnReady | None:
    """Before a VM with NICs on networks is called ready, wait until the guest holds an
    IPv4 address on each of them (DHCP), as multipass does, so ``corral ip`` right after
    ``corral run`` answers. A guest that never gets one is called ready after a while."""
    macs = {n.mac.lower() for n in rec.spec.nics if n.mode == "network"}
    if not macs:
        return None

    async def wait(_name: str, machine: Machine) -> None:
        deadline = time.monotonic() + DHCP_WAIT
        while time.monotonic() < deadline:
            with contextlib.suppress(CorralError):
                leased = {(i.mac or "").lower() for i in await machine.guest_interfaces(2)
                          if any(kind == "ipv4" for _, _, kind in i.addresses)}
                if macs <= leased:
                    return
            await asyncio.sleep(0.05)

    return wait


class Lifecycle:
    """Start, pause, resume, shutdown, stop and reboot of VMs."""

    def __init__(self, rt: VMRuntime, sched: Scheduler) -> None:
        self.rt = rt
        self.sched = sched
        self.gate = BootGate(rt.accel)

    async def start(self, name: str, wait: bool = False, timeout: float = READY_TIMEOUT,
                    queue: bool = True, ahead: bool = False) -> dict[str, Any]:
        """Boot a defined or stopped VM, or queue it when the host is full (it then starts
        by itself when capacity frees). With ``wait``, return once the guest agent answers,
        waiting in the queue first if need be. A saved VM is restored. ``ahead``: it may
        take capacity that fits even with requests waiting (a pool's refill, configured
        so).

        :raises InvalidState: the VM is not defined, stopped, crashed or saved.
        :raises InvalidSpec: the VM is larger than the whole host.
        :raises NoCapacity: it does not fit now and ``queue`` is false.
        :raises LaunchFailed: QEMU would not start (its own words are in the message).
        :raises Timeout: with ``wait``, the guest was not ready in time (it keeps running).
        """
        rt = self.rt
        t0 = time.monotonic()
        async with rt.lock(name):
            rec = rt.get(name)
            saved = rec.state == State.SAVED  # like a managed save: start restores it
            if not saved:
                check(name, "start", rec.state)
                s = rec.spec.sched
                rt.record(rec, "requested", owner=s.owner, priority=s.priority,
                          expected_runtime=s.expected_runtime, cpus=rec.spec.cpus,
                          memory=rec.spec.memory_bytes)
                if self.sched.admit(rec, queue, ahead):
                    await self.boot(rec, rec.state)
        if saved:
            from corral.service import saved as saved_state

            return await saved_state.restore(rt, self.sched, name, wait, timeout, queue)
        if wait:
            await rt.wait_admitted(name, timeout)
            await rt.wait_ready(name, max(0.1, timeout - (time.monotonic() - t0)))
        return rt.view(rt.get(name))

    async def boot(self, rec: VMRecord, before: State) -> None:
        """Launch an admitted VM (its capacity is reserved): a cold boot, or the resume of a
        warm-start template. On failure the reservation is released and the VM is
        ``before`` again."""
        rt = self.rt
        async with rt.rollback(rec, before):
            rt.set_state(rec, State.STARTING)
            if rec.spec.warm_template:
                from corral.service import warm

                await warm.resume_template(rt, rec)
            else:
                await self._cold_boot(rec)
        if rec.spec.sched.timeslice:
            self.sched.poke()

    async def _cold_boot(self, rec: VMRecord) -> None:
        from corral.service import disks

        await self.gate.enter()
        try:
            live = await self.rt.spawn(rec)
        except BaseException:
            self.gate.leave()
            raise
        if live.machine.has_agent:
            self.rt.background(self.gate.leave_when_booted(live.ready,
                                                           live.machine.wait_exit()))
        else:
            self.gate.leave()
        for i, disk in enumerate(rec.spec.disks):
            await disks.apply_limits(live.machine, disk, disk.node(i),
                                     rec.spec.machine == "q35")
        await self.sched.place_process(rec, live.machine)
        rec.started_at, rec.ready_at, rec.exit_reason = time.time(), None, None
        self.rt.set_state(rec, State.RUNNING, "started", pid=rec.pid)
        self.rt.watch_ready(rec.name, live, on_ready=addresses_leased(rec))

    async def start_admitted(self, name: str) -> None:
        """Start a VM the queue has just admitted (its capacity is reserved)."""
        async with self.rt.lock(name):
            rec = self.rt.db.get_vm(name)
            if rec is None or rec.state != State.QUEUED:
                self.sched.release(name)  # cancelled meanwhile
                return
            with contextlib.suppress(CorralError):  # recorded on the VM as *_failed
                if rec.saved_state:  # a saved VM waited for room to be restored
                    from corral.service import saved

                    await saved.load(self.rt, rec)
                else:
                    await self.boot(rec, State.DEFINED if rec.started_at is None
                                    else State.STOPPED)

    async def wait_ready(self, name: str, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
        """:raises Timeout: the agent did not answer. :raises InvalidState: not running."""
        await self.rt.wait_ready(name, timeout)
        return self.rt.view(self.rt.get(name))

    async def pause(self, name: str) -> dict[str, Any]:
        """:raises InvalidState: unless the VM is running."""
        async with self.rt.lock(name):
            rec = self.rt.get(name)
            check(name, "pause", rec.state)
            await self.rt.machine(rec).machine.pause()
            if rec.state != State.PAUSED:  # QEMU knows it too: adoption re-reads it
                self.rt.set_state(rec, State.PAUSED, wait=False)
            return self.rt.view(rec)

    async def resume(self, name: str) -> dict[str, Any]:
        """:raises InvalidState: unless the VM is paused."""
        self.sched.sliced_out.discard(name)
        async with self.rt.lock(name):
            rec = self.rt.get(name)
            check(name, "resume", rec.state)
            await self.rt.machine(rec).machine.cont()
            if rec.state != State.RUNNING:
                self.rt.set_state(rec, State.RUNNING, wait=False)
            return self.rt.view(rec)

    async def shutdown(self, name: str, timeout: float = 60.0) -> dict[str, Any]:
        """Ask the guest to power off (guest agent if it answers, else the ACPI power
        button); force it off after ``timeout`` seconds.

        :raises InvalidState: unless the VM is running or paused.
        """
        rt = self.rt
        async with rt.lock(name):
            rec = rt.get(name)
            check(name, "shutdown", rec.state)
            live = rt.machine(rec)
            was_paused = rec.state == State.PAUSED
            rt.set_state(rec, State.STOPPING, "shutdown_requested")
            live.expected_exit = "shut down"
            by_agent = False
            if live.machine.has_agent and live.ready.is_set() and not was_paused:
                with contextlib.suppress(AgentError, Timeout):
                    await live.machine.guest_shutdown()
                    by_agent = True
            if not by_agent:
                with contextlib.suppress(CorralError):
                    if was_paused:
                        await live.machine.cont()
                    await live.machine.powerdown()
            if not await live.machine.wait_exit(timeout):
                live.expected_exit = (f"forced off after the guest ignored a {timeout:g} s "
                                      "shutdown")
                await rt.kill(live)
            return rt.view(rt.get(name))

    async def stop(self, name: str, force: bool = True, timeout: float = 60.0
                   ) -> dict[str, Any]:
        """Stop a VM: at once with ``force`` (like pulling the plug), else as
        :meth:`shutdown`. Stopping a queued VM cancels its request.

        :raises InvalidState: unless the VM has a running QEMU or is queued.
        """
        rt = self.rt
        if not force and rt.get(name).state != State.QUEUED:
            check(name, "stop", rt.get(name).state)  # refused as a stop, not a shutdown
            return await self.shutdown(name, timeout)
        async with rt.lock(name):
            rec = rt.get(name)
            check(name, "stop", rec.state)
            if rec.state == State.QUEUED:  # back where it waited from
                self.sched.cancel(rec, State.SAVED if rec.saved_state else
                                  State.DEFINED if rec.started_at is None else State.STOPPED)
                return rt.view(rec)
            live = rt.machine(rec)
            live.expected_exit = "forced off"
            if rec.state != State.STOPPING:  # a daemon that dies now: stopped, not crashed
                rt.set_state(rec, State.STOPPING, "stop_requested")
            await rt.kill(live)
            return rt.view(rt.get(name))

    async def reboot(self, name: str, wait: bool = False, timeout: float = READY_TIMEOUT
                     ) -> dict[str, Any]:
        """Reboot the guest: through the agent if it answers, else a hard reset.

        :raises InvalidState: unless the VM is running.
        """
        rt = self.rt
        async with rt.lock(name):
            rec = rt.get(name)
            check(name, "reboot", rec.state)
            live = rt.machine(rec)
            live.reset.clear()
            done = False
            if live.machine.has_agent and live.ready.is_set():
                with contextlib.suppress(AgentError, Timeout):
                    await live.machine.guest_shutdown(reboot=True)
                    done = True
            if done:
                try:
                    await asyncio.wait_for(live.reset.wait(), 15)
                except TimeoutError:
                    done = False
            if not done:
                await live.machine.reset()
                rt.on_reset(name, live)
            rt.record(rec, "rebooted")
        if wait:
            await rt.wait_ready(name, timeout)
        return rt.view(rt.get(name))
