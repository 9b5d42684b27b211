"""The admission queue: VMs waiting for capacity, and which of them start next.

A VM that cannot start for lack of capacity waits here as a :class:`Request`. Whenever
capacity may have changed (a VM stopped, a request arrived) the caller asks
:func:`next_to_start` which requests to admit now, starts them, and tells the queue with
:meth:`AdmissionQueue.start`. The same code runs in the daemon and in the simulator.

**Policies** decide the order in which waiting requests are considered:

``fcfs``
    First come, first served: by arrival time.
``sjf``
    Shortest job first: by declared expected runtime (requests without one go last), then by
    size (vCPUs, then memory, then disk), then by arrival. With honest estimates SJF gives the
    lowest mean response time; under sustained load it can starve long jobs.
``priority``
    Highest *effective* priority first, with **aging**::

        effective priority = priority + aging_rate × waiting time

    A waiting request gains priority as it waits, so a request of priority p overtakes any
    newcomer of priority q > p once it has waited (q − p) / aging_rate seconds: nothing starves.
    All waiting requests age at the same rate, so the order between two of them never changes
    with time; aging only decides where newcomers go.
``fair``
    Round robin across owners: each owner's requests in FCFS order, and owners take turns, the
    owner served least recently first (owners never served by their oldest request). An owner
    who submits a burst of 100 gets every other turn, not the next 100.

**Admission** walks the policy order and admits requests while they fit, and stops at the
first that does not, the *head*: otherwise a large request would be overtaken forever by a
stream of small ones. With **backfill** a request behind a blocked head may still start now,
but only if that cannot delay the head. The head's earliest start, the *shadow time*, comes
from the expected ends of the running VMs (:func:`earliest_start`); a candidate may start
if it fits now and either is expected to end by the shadow time, or fits in what will be left
over at the shadow time once the head has started. This protects the head only (EASY
backfilling, Lifka 1995), and conservatively: a request with no expected runtime may only use
the leftovers, a running VM with no expected end is assumed never to end, and one that overran
its estimate is assumed to end now. Runtimes are users' estimates, so a VM that runs longer
than it declared can still delay the head.

State is plain data: :meth:`AdmissionQueue.to_dict` and :meth:`AdmissionQueue.from_dict`
round-trip the requests, their arrival order and the owners' turns, so a daemon restart keeps
the queue and its order. Times are the caller's clock in seconds; the daemon should use wall
clock time so that waiting times survive a restart.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from corral.errors import AlreadyExists, InvalidSpec, NotFound
from corral.scheduler.resources import Inventory, Reservation, Resources

POLICIES = ("fcfs", "sjf", "priority", "fair")
#: One priority point per minute of waiting.
DEFAULT_AGING_RATE = 1 / 60


@dataclass(frozen=True, slots=True)
class Request:
    """A VM waiting to start. ``seq`` is given by the queue and breaks every tie."""

    id: str
    vm: str
    owner: str
    cpus: int
    memory: int
    disk: int = 0
    priority: int = 0
    expected_runtime: float | None = None
    arrival: float = 0.0
    seq: int = 0

    @property
    def resources(self) -> Resources:
        return Resources(self.cpus, self.memory, self.disk)

    def reservation(self, now: float) -> Reservation:
        """What the VM will hold once started at ``now``."""
        end = None if self.expected_runtime is None else now + self.expected_runtime
        return Reservation(self.vm, self.cpus, self.memory, self.disk, end)


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """One line of ``corral queue``: 1-based position, waiting seconds, effective priority."""

    position: int
    request: Request
    waiting: float
    effective_priority: float


def _check(request: Request) -> None:
    if not request.id or not request.vm:
        raise InvalidSpec("id", "a request needs an id and a VM name")
    if request.cpus < 1:
        raise InvalidSpec("cpus", f"{request.cpus} is not a CPU count; give at least 1")
    for field in ("memory", "disk"):
        if getattr(request, field) < 0:
            raise InvalidSpec(field, f"{getattr(request, field)} is negative")
    rt = request.expected_runtime
    if rt is not None and not (math.isfinite(rt) and rt > 0):
        raise InvalidSpec("expected_runtime", f"{rt!r} is not a duration; give seconds above 0")
    if not math.isfinite(request.arrival):
        raise InvalidSpec("arrival", f"{request.arrival!r} is not a time")


class AdmissionQueue:
    """The waiting requests of one host, their policy and the owners' turns.

    :raises InvalidSpec: for an unknown policy or a negative aging rate.
    """

    def __init__(self, policy: str = "fcfs", *, backfill: bool = False,
                 aging_rate: float = DEFAULT_AGING_RATE) -> None:
        if policy not in POLICIES:
            raise InvalidSpec("policy", f"'{policy}' is not a policy; use one of "
                                        + ", ".join(POLICIES))
        if not (math.isfinite(aging_rate) and aging_rate >= 0):
            raise InvalidSpec("aging_rate", f"{aging_rate!r} is not a rate; give 0 or more "
                                            "priority points per second")
        self.policy = policy
        self.backfill = backfill
        self.aging_rate = aging_rate
        self._waiting: dict[str, Request] = {}  # in seq order
        self._vms: set[str] = set()
        self._next_seq = 1
        self._turns = 0
        self._last_turn: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def waiting(self) -> list[Request]:
        """The waiting requests in arrival order."""
        return list(self._waiting.values())

    def get(self, request_id: str) -> Request:
        """:raises NotFound: when no request of that id waits."""
        try:
            return self._waiting[request_id]
        except KeyError:
            raise NotFound(f"no queued request '{request_id}'") from None

    def submit(self, request: Request) -> Request:
        """Queue ``request``; return it with its sequence number.

        :raises InvalidSpec: when a field is wrong (no id, no CPU, negative sizes).
        :raises AlreadyExists: when the id, or the VM, already waits.
        """
        _check(request)
        if request.id in self._waiting:
            raise AlreadyExists(f"request '{request.id}' is already queued")
        if request.vm in self._vms:
            raise AlreadyExists(f"VM '{request.vm}' is already queued")
        queued = Request(request.id, request.vm, request.owner, request.cpus, request.memory,
                         request.disk, request.priority, request.expected_runtime,
                         request.arrival, self._next_seq)
        self._next_seq += 1
        self._waiting[queued.id] = queued
        self._vms.add(queued.vm)
        return queued

    def cancel(self, request_id: str) -> Request:
        """Remove a waiting request; return it.

        :raises NotFound: when no request of that id waits.
        """
        request = self.get(request_id)
        del self._waiting[request_id]
        self._vms.discard(request.vm)
        return request

    def start(self, request_id: str) -> Request:
        """Remove a request that is being admitted, and give its owner's turn away.

        :raises NotFound: when no request of that id waits.
        """
        request = self.cancel(request_id)
        self._turns += 1
        self._last_turn[request.owner] = self._turns
        return request

    def effective_priority(self, request: Request, now: float) -> float:
        return request.priority + self.aging_rate * max(now - request.arrival, 0.0)

    def ordered(self, now: float) -> list[Request]:
        """The waiting requests in the order the policy considers them at ``now``."""
        waiting = list(self._waiting.values())
        if self.policy == "fcfs":
            return sorted(waiting, key=lambda r: (r.arrival, r.seq))
        if self.policy == "sjf":
            return sorted(waiting, key=lambda r: (
                math.inf if r.expected_runtime is None else r.expected_runtime,
                r.cpus, r.memory, r.disk, r.arrival, r.seq))
        if self.policy == "priority":
            return sorted(waiting, key=lambda r: (-self.effective_priority(r, now),
                                                  r.arrival, r.seq))
        return self._round_robin(waiting)

    def _round_robin(self, waiting: list[Request]) -> list[Request]:
        by_owner: dict[str, list[Request]] = {}
        for r in sorted(waiting, key=lambda r: (r.arrival, r.seq)):
            by_owner.setdefault(r.owner, []).append(r)
        owners = sorted(by_owner, key=lambda o: (self._last_turn.get(o, 0),
                                                 by_owner[o][0].arrival, by_owner[o][0].seq))
        order: list[Request] = []
        for turn in range(max((len(v) for v in by_owner.values()), default=0)):
            order.extend(by_owner[o][turn] for o in owners if turn < len(by_owner[o]))
        return order

    def entries(self, now: float) -> list[QueueEntry]:
        """What ``corral queue`` lists: every request in policy order."""
        return [QueueEntry(i, r, max(now - r.arrival, 0.0), self.effective_priority(r, now))
                for i, r in enumerate(self.ordered(now), 1)]

    def position(self, request_id: str, now: float) -> int:
        """1-based place of a request in the policy order.

        :raises NotFound: when no request of that id waits.
        """
        self.get(request_id)
        return next(i for i, r in enumerate(self.ordered(now), 1) if r.id == request_id)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able state; :meth:`from_dict` rebuilds the same queue."""
        return {
            "version": 1, "policy": self.policy, "backfill": self.backfill,
            "aging_rate": self.aging_rate, "next_seq": self._next_seq, "turns": self._turns,
            "last_turn": dict(self._last_turn),
            "requests": [dataclasses.asdict(r) for r in self._waiting.values()],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdmissionQueue:
        """Rebuild a queue saved by :meth:`to_dict`.

        :raises InvalidSpec: when ``data`` is not a saved queue.
        """
        try:
            if data["version"] != 1:
                raise ValueError(f"version {data['version']!r} is not 1")
            queue = cls(str(data["policy"]), backfill=bool(data["backfill"]),
                        aging_rate=float(data["aging_rate"]))
            for item in sorted(data["requests"], key=lambda d: int(d["seq"])):
                request = Request(**item)
                _check(request)
                if request.id in queue._waiting or request.vm in queue._vms:
                    raise ValueError(f"request '{request.id}' appears twice")
                queue._waiting[request.id] = request
                queue._vms.add(request.vm)
            last_seq = max((r.seq for r in queue._waiting.values()), default=0)
            queue._next_seq = max(int(data["next_seq"]), last_seq + 1)
            queue._turns = int(data["turns"])
            queue._last_turn = {str(k): int(v) for k, v in dict(data["last_turn"]).items()}
        except (KeyError, TypeError, ValueError) as err:
            raise InvalidSpec("queue", f"saved queue state is malformed: {err}") from err
        return queue


def earliest_start(need: Resources, inventory: Inventory, now: float,
                   starting: Iterable[Reservation] = ()) -> tuple[float, Resources] | None:
    """When ``need`` could start at the earliest, and what would be left over then.

    Running VMs (the inventory's reservations and ``starting``) are released at their expected
    ends, earliest first (an end already past counts as now; a VM with no expected end never
    ends). ``None`` when ``need`` fits at no such moment.
    """
    starting = list(starting)
    room = inventory.capacity - inventory.allocated
    for r in starting:
        room = room - r.resources
    if need.fits_in(room):
        return now, room - need
    ends = sorted(((max(r.expected_end, now), r.resources)
                   for r in [*inventory.reservations.values(), *starting]
                   if r.expected_end is not None), key=lambda pair: pair[0])
    for end, freed in ends:
        room = room + freed
        if need.fits_in(room):
            return end, room - need
    return None


def next_to_start(queue: AdmissionQueue, inventory: Inventory, now: float) -> list[Request]:
    """The requests to admit at ``now``, in the order to start them. Changes nothing.

    The caller starts each, then calls ``queue.start(request.id)`` and
    ``inventory.reserve(request.reservation(now))``.
    """
    cap, held = inventory.capacity, inventory.allocated
    cpus, memory, disk = cap.cpus - held.cpus, cap.memory - held.memory, cap.disk - held.disk
    if not len(queue) or cpus < 1:  # every request needs a vCPU: nothing can start
        return []
    order = queue.ordered(now)
    chosen: list[Request] = []
    for r in order:  # plain integers: this loop runs at every arrival and every end
        if r.cpus > cpus or r.memory > memory or r.disk > disk:
            break
        cpus, memory, disk = cpus - r.cpus, memory - r.memory, disk - r.disk
        chosen.append(r)
    if not queue.backfill or len(chosen) == len(order):
        return chosen
    room = Resources(cpus, memory, disk)
    head = order[len(chosen)]
    shadow = earliest_start(head.resources, inventory, now, [r.reservation(now) for r in chosen])
    if shadow is None:
        return chosen
    start, spare = shadow
    for candidate in order[len(chosen) + 1:]:
        need = candidate.resources
        if not need.fits_in(room):
            continue
        runtime = candidate.expected_runtime
        if runtime is not None and now + runtime <= start:
            room = room - need
        elif need.fits_in(spare):
            room, spare = room - need, spare - need
        else:
            continue
        chosen.append(candidate)
    return chosen
