"""Round-robin time slicing of VMs, as a pure state machine.

VMs marked time-sliced may be more than the host lets run at once (``slots``). The slicer
keeps at most ``slots`` of them running and the others paused, in a ring: when a running VM
has used its **quantum** and another VM waits, the running one is paused and goes to the back
of the ring, and the VM at the front is resumed. A VM is only preempted when someone waits for
its slot, so with enough slots nothing is ever paused. Every VM that keeps wanting to run gets
a quantum at least once per ``ceil(n / slots)`` quanta: each makes progress.

The slicer does no I/O. The daemon calls :meth:`TimeSlicer.tick` with the time and the set of
time-sliced VMs that want to run (a stopped or destroyed VM simply drops out of the set), does
what the returned :class:`Step` says (QMP ``stop`` for ``pause``, ``cont`` for ``resume``), and
calls again at :meth:`TimeSlicer.next_tick` or when the set changes. A VM enters the ring
paused and is resumed when its turn comes, so time-sliced VMs should be started paused.

Fairness is measured over the run time each VM has accumulated, with **Jain's index**::

    J(x₁ … xₙ) = (Σ xᵢ)² / (n · Σ xᵢ²)

which is 1 when every VM got the same, and 1/n when one VM got everything.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from corral.errors import InvalidSpec


@dataclass(frozen=True, slots=True)
class Step:
    """What to do now: VMs to pause, then VMs to resume (never the same VM in both)."""

    pause: tuple[str, ...] = ()
    resume: tuple[str, ...] = ()


def jain_index(values: Iterable[float]) -> float:
    """Jain's fairness index of ``values``: 1.0 when all are equal (or there are none)."""
    xs = list(values)
    square_sum = sum(x * x for x in xs)
    if not xs or square_sum == 0:
        return 1.0
    return sum(xs) ** 2 / (len(xs) * square_sum)


class TimeSlicer:
    """Round robin over the time-sliced VMs that want to run.

    :raises InvalidSpec: when ``slots`` is below 1 or ``quantum`` is not a positive duration.
    """

    def __init__(self, slots: int, quantum: float) -> None:
        if slots < 1:
            raise InvalidSpec("slots", f"{slots} VMs at once is too few; give at least 1")
        if not (math.isfinite(quantum) and quantum > 0):
            raise InvalidSpec("quantum", f"{quantum!r} is not a duration; give seconds above 0")
        self.slots = slots
        self.quantum = quantum
        self._running: dict[str, float] = {}  # VM → start of its current slice
        self._waiting: deque[str] = deque()
        self._run_time: dict[str, float] = {}
        self._last: float | None = None

    @property
    def running(self) -> tuple[str, ...]:
        return tuple(self._running)

    @property
    def waiting(self) -> tuple[str, ...]:
        """Paused VMs, next to run first."""
        return tuple(self._waiting)

    @property
    def run_time(self) -> Mapping[str, float]:
        """Seconds each VM in the ring has run so far."""
        return {vm: self._run_time[vm] for vm in (*self._running, *self._waiting)}

    def tick(self, now: float, wanting: Iterable[str]) -> Step:
        """Account run time up to ``now``, follow the new ``wanting`` set, rotate the ring.

        New VMs join at the back of the ring in name order; VMs no longer wanting leave it
        (they need no pause: they stopped). Returns which VMs to pause and which to resume.
        """
        want = set(wanting)
        if self._last is not None:
            for vm in self._running:
                self._run_time[vm] += max(now - self._last, 0.0)
        self._last = now
        self._running = {vm: t for vm, t in self._running.items() if vm in want}
        self._waiting = deque(vm for vm in self._waiting if vm in want)
        for gone in set(self._run_time) - want:
            del self._run_time[gone]
        for vm in sorted(want - set(self._running) - set(self._waiting)):
            self._waiting.append(vm)
            self._run_time[vm] = 0.0

        short = len(self._waiting) - (self.slots - len(self._running))
        # oldest slice first; equal starts keep ring order (the sort is stable)
        expired = sorted((vm for vm, t in self._running.items() if now - t >= self.quantum),
                         key=self._running.__getitem__)
        pause = expired[:max(short, 0)]
        for vm in pause:
            del self._running[vm]
        resume: list[str] = []
        while self._waiting and len(self._running) < self.slots:
            vm = self._waiting.popleft()
            self._running[vm] = now
            resume.append(vm)
        self._waiting.extend(pause)
        return Step(tuple(pause), tuple(resume))

    def next_tick(self) -> float | None:
        """When the next slice ends and someone waits for it; ``None`` when nobody waits."""
        if not self._waiting or not self._running:
            return None
        return min(self._running.values()) + self.quantum

    def fairness(self) -> float:
        """Jain's index over the run time of the VMs in the ring."""
        return jain_index(self.run_time.values())
