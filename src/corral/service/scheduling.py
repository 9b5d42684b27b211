"""The daemon's scheduler: capacity accounting, the admission queue, CPU time slices and
cgroup limits, on top of the pure code in :mod:`corral.scheduler`.

* **Accounting.** Every VM holds a reservation (vCPUs, memory) from the moment it is admitted
  until its QEMU exits; ``corral host info`` shows totals, allocations and the ratios. The
  totals are the host's, scaled by the overcommit ratios (CPU 4.0, memory 1.0, disk 1.0 by
  default; ``CORRAL_CPU_RATIO`` …). ``CORRAL_HOST_CPUS`` / ``CORRAL_HOST_MEMORY`` pretend to
  a smaller host (tests, or to keep room for other work).
* **Admission.** A start that does not fit (or finds others already waiting) enters the
  queue and the VM becomes ``queued``; it starts by itself when capacity frees, in the order
  of the policy (``CORRAL_QUEUE_POLICY``: fcfs, sjf, priority, fair; ``CORRAL_BACKFILL=1``).
  ``--no-queue`` fails at once instead. The queue is stored with every change, so a daemon
  restart keeps it and its order.
* **Time slices.** VMs created ``--timeslice`` take no CPU reservation; instead at most
  ``CORRAL_TIMESLICE_SLOTS`` of them run at once and the daemon pauses and resumes them in
  turn every ``CORRAL_QUANTUM`` seconds.
* **cgroups.** ``--cpu-weight`` and ``--cpu-max`` put the VM's QEMU in its own cgroup
  (v1 ``cpu.shares``/``cpu.cfs_quota_us`` or v2 ``cpu.weight``/``cpu.max``); ``--pin`` sets
  its vCPU threads' affinity.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral.domain.states import LIVE, State
from corral.errors import CorralError, NoCapacity
from corral.host import cgroups
from corral.scheduler.queue import AdmissionQueue, Request, next_to_start
from corral.scheduler.resources import (
    Inventory,
    Overcommit,
    Reservation,
    Resources,
    capacity_message,
)
from corral.scheduler.timeslice import TimeSlicer
from corral.service import hostfacts

if TYPE_CHECKING:
    from corral.engine.driver import Machine
    from corral.service.runtime import VMRuntime
    from corral.store.db import VMRecord

log = logging.getLogger(__name__)
QUEUE_DOC = "admission_queue"


@dataclass(frozen=True)
class Settings:
    cpus: int
    memory: int
    disk: int
    ratios: Overcommit
    policy: str
    backfill: bool
    slots: int
    quantum: float

    @classmethod
    def from_env(cls, home: Path) -> Settings:
        """The host's capacity and the scheduler's settings in force (:mod:`corral.settings`).

        :raises CorralError: when a setting's value does not parse.
        """
        from corral import settings

        def get(key: str) -> Any:
            try:
                return settings.value(key)
            except settings.SettingError as err:
                raise CorralError(str(err)) from err

        memory = get("host.memory")
        return cls(
            cpus=get("host.cpus") or os.cpu_count() or 1,
            memory=memory or hostfacts.memory_bytes()[0],
            disk=shutil.disk_usage(home).total,
            ratios=Overcommit(get("scheduler.cpu_ratio"), get("scheduler.memory_ratio"),
                              get("scheduler.disk_ratio")),
            policy=get("scheduler.queue_policy"),
            backfill=get("scheduler.backfill"),
            slots=get("scheduler.timeslice_slots") or os.cpu_count() or 1,
            quantum=get("scheduler.quantum"))


def _need(rec: VMRecord) -> Resources:
    cpus = 0 if rec.spec.sched.timeslice else rec.spec.cpus
    return Resources(cpus, rec.spec.memory_bytes, 0)


class Scheduler:
    """Capacity, queue and time slices of one host."""

    def __init__(self, rt: VMRuntime) -> None:
        self.rt = rt
        self.settings = Settings.from_env(rt.paths.home)
        #: how an admitted VM is started (set by the composition root: the lifecycle's)
        self.start_admitted: Callable[[str], Awaitable[None]] | None = None
        s = self.settings
        self.inventory = Inventory(Resources(s.cpus, s.memory, s.disk), s.ratios)
        self.queue = AdmissionQueue(s.policy, backfill=s.backfill)
        self.slicer = TimeSlicer(s.slots, s.quantum)
        self._slice_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.sliced_out: set[str] = set()  # time-sliced VMs the slicer holds paused
        self.old_groups: dict[str, list[Path]] = {}  # VM -> its groups left under a name before

    # ----- restart -----
    def load(self) -> None:
        """Rebuild reservations from the live VMs and the queue from the store."""
        for rec in self.rt.db.list_vms():
            if rec.state in LIVE:
                self.inventory.reserve(self._reservation(rec, rec.started_at or time.time()))
        doc = self.rt.db.get_doc(QUEUE_DOC)
        if doc:
            saved = AdmissionQueue.from_dict(doc)
            if (saved.policy, saved.backfill) == (self.queue.policy, self.queue.backfill):
                self.queue = saved
            else:  # the daemon's policy changed: keep the requests in arrival order
                for req in saved.waiting():
                    self.queue.submit(req)
        for req in self.queue.waiting():  # VMs destroyed while the daemon was down
            queued = self.rt.db.get_vm(req.vm)
            if queued is None or queued.state != State.QUEUED:
                self.queue.cancel(req.id)
        self._slice_task = asyncio.create_task(self._slice_loop(), name="timeslicer")

    def reload_settings(self) -> None:
        """Take up the settings in force now (``corral host set``): the overcommit ratios,
        the queue's policy and backfill (the waiting requests keep their arrival order) and
        the quantum; then start whoever fits under the new rules.

        :raises CorralError: a setting's value does not parse.
        """
        new = Settings.from_env(self.rt.paths.home)
        self.inventory.ratios = new.ratios
        self.inventory.capacity = new.ratios.apply(self.inventory.total)
        if (new.policy, new.backfill) != (self.queue.policy, self.queue.backfill):
            queue = AdmissionQueue(new.policy, backfill=new.backfill)
            for req in self.queue.waiting():
                queue.submit(req)
            self.queue = queue
            self._save_queue()
        self.slicer.quantum = new.quantum
        self.settings = new
        self.dispatch()
        self._wake.set()

    async def close(self) -> None:
        if self._slice_task is not None:
            self._slice_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._slice_task

    def _reservation(self, rec: VMRecord, now: float) -> Reservation:
        need = _need(rec)
        rt = rec.spec.sched.expected_runtime
        return Reservation(rec.name, need.cpus, need.memory, need.disk,
                           None if rt is None else now + rt)

    def _save_queue(self, rec: VMRecord | None = None, kind: str | None = None,
                    **detail: Any) -> None:
        self.rt.db.put_doc(QUEUE_DOC, self.queue.to_dict(), rec, kind, detail)

    # ----- admission -----
    def admit(self, rec: VMRecord, queue: bool = True, ahead: bool = False) -> bool:
        """Reserve capacity for ``rec`` now (True), or queue it (False; the VM is then
        ``queued`` and recorded with the queue in one transaction). ``ahead``: capacity
        that fits is taken even with requests waiting.

        :raises InvalidSpec: the VM is larger than the whole host (it would wait forever).
        :raises NoCapacity: it does not fit now and ``queue`` is false.
        """
        need = _need(rec)
        self.inventory.check_request(need)
        now = time.time()
        if (ahead or len(self.queue) == 0) and self.inventory.fits(need):
            self.inventory.reserve(self._reservation(rec, now))
            return True
        if not queue:
            short = self.inventory.shortages(need)
            if short:
                raise NoCapacity(capacity_message(short))
            raise NoCapacity(f"not enough capacity: {len(self.queue)} requests are waiting "
                             "ahead of this one")
        sched = rec.spec.sched
        req = self.queue.submit(Request(
            id=uuid.uuid4().hex[:12], vm=rec.name, owner=sched.owner, cpus=max(need.cpus, 1),
            memory=need.memory, disk=need.disk, priority=sched.priority,
            expected_runtime=sched.expected_runtime, arrival=now))
        self.rt.set_state(rec, State.QUEUED, "queued", doc=(QUEUE_DOC, self.queue.to_dict()),
                          request=req.id, position=self.queue.position(req.id, now))
        return False

    def reserve_now(self, rec: VMRecord) -> None:
        """Reserve capacity for ``rec`` at once, ahead of the queue (a restore: the VM held
        it before it was saved).

        :raises NoCapacity: it does not fit.
        """
        need = _need(rec)
        if not self.inventory.fits(need):
            raise NoCapacity(capacity_message(self.inventory.shortages(need)))
        self.inventory.reserve(self._reservation(rec, time.time()))

    def cancel(self, rec: VMRecord, state: State) -> None:
        """Take a queued VM out of the queue; it moves to ``state``."""
        for req in self.queue.waiting():
            if req.vm == rec.name:
                self.queue.cancel(req.id)
        self.rt.set_state(rec, state, "dequeued", doc=(QUEUE_DOC, self.queue.to_dict()))

    def release(self, name: str) -> None:
        """The VM's QEMU is gone: free its capacity and cgroups, start whoever now fits."""
        cgroups.remove_group(cgroups.group_path(self.rt.paths.tag, name))
        cgroups.remove_limits(self.rt.paths.tag, name)
        for group in self.old_groups.pop(name, ()):
            cgroups.remove_group(group)
        self.sliced_out.discard(name)
        if self.inventory.release(name) is not None:
            self.dispatch()
        self._wake.set()

    def renamed(self, old: str, new: str) -> None:
        """A live VM was renamed: its reservation and its cgroups go with it."""
        # groups that could not follow go when the VM does, under whichever name it then has
        stayed = self.old_groups.pop(old, []) + cgroups.rename(self.rt.paths.tag, old, new)
        if stayed:
            self.old_groups[new] = stayed
        held = self.inventory.release(old)
        if held is not None:
            self.inventory.reserve(dataclasses.replace(held, vm=new))

    def dispatch(self) -> None:
        now = time.time()
        for req in next_to_start(self.queue, self.inventory, now):
            self.queue.start(req.id)
            rec = self.rt.db.get_vm(req.vm)
            if rec is None:
                continue
            self.inventory.reserve(self._reservation(rec, now))
            self._save_queue()
            assert self.start_admitted is not None, "Scheduler.start_admitted is not set"
            self.rt.background(self.start_admitted(req.vm))

    def entries(self) -> list[dict[str, Any]]:
        now = time.time()
        return [{"position": e.position, "vm": e.request.vm, "owner": e.request.owner,
                 "cpus": e.request.cpus, "memory_bytes": e.request.memory,
                 "priority": e.request.priority, "effective_priority":
                     round(e.effective_priority, 3),
                 "expected_runtime": e.request.expected_runtime,
                 "waiting_seconds": round(e.waiting, 3), "request": e.request.id}
                for e in self.queue.entries(now)]

    def info(self) -> dict[str, Any]:
        s = self.settings
        return {"capacity": self.inventory.to_dict(), "policy": s.policy,
                "backfill": s.backfill, "queued": len(self.queue),
                "timeslice": {"slots": s.slots, "quantum": s.quantum,
                              "fairness": round(self.slicer.fairness(), 4),
                              "run_seconds": {k: round(v, 3) for k, v in
                                              self.slicer.run_time.items()}}}

    # ----- after launch: cgroups and pinning -----
    async def place_process(self, rec: VMRecord, machine: Machine) -> None:
        """Put a new machine under its CPU weight/cap and pin its vCPUs, as the spec asks."""
        sched = rec.spec.sched
        if sched.cpu_weight is not None or sched.cpu_max is not None:
            cgroups.apply(self.rt.paths.tag, rec.name, machine.pid, sched.cpu_weight,
                          sched.cpu_max)
        if sched.pin:
            for thread in await machine.vcpu_threads():
                os.sched_setaffinity(thread, set(sched.pin))

    # ----- time slices -----
    def wanting(self) -> list[str]:
        """Time-sliced VMs whose guests want CPU: running, or held paused by the slicer."""
        out = []
        for rec in self.rt.db.list_vms():
            if not rec.spec.sched.timeslice or rec.name not in self.rt.live:
                continue
            if rec.state == State.RUNNING or (rec.state == State.PAUSED
                                              and rec.name in self.sliced_out):
                out.append(rec.name)
        return out

    async def _slice_loop(self) -> None:
        while True:
            try:
                await self._slice_once()
            except Exception:
                log.exception("time slicer step failed")
            nxt = self.slicer.next_tick()
            delay = max(0.01, (nxt - time.time())) if nxt else 3600.0
            self._wake.clear()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the
            # cancellation that close() sends when the wake-up lands in the same turn
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    def poke(self) -> None:
        self._wake.set()

    async def _slice_once(self) -> None:
        wanting = self.wanting()
        if not wanting and not self.slicer.running and not self.slicer.waiting:
            return
        step = self.slicer.tick(time.time(), wanting)
        for name in step.pause:
            await self._hold(name, pause=True)
        for name in step.resume:
            await self._hold(name, pause=False)

    async def _hold(self, name: str, pause: bool) -> None:
        live = self.rt.live.get(name)
        rec = self.rt.db.get_vm(name)
        if live is None or rec is None:
            return
        async with self.rt.lock(name):
            if pause and rec.state == State.RUNNING:
                await live.machine.pause()
                self.sliced_out.add(name)
                self.rt.set_state(rec, State.PAUSED, "timeslice_out", wait=False)
            elif not pause and name in self.sliced_out and rec.state == State.PAUSED:
                await live.machine.cont()
                self.sliced_out.discard(name)
                self.rt.set_state(rec, State.RUNNING, "timeslice_in", wait=False)
