"""Host resources: what a host has, what its VMs hold, and whether one more VM fits.

Three resources are accounted: vCPUs, memory and disk, all as integers (disk and memory in
bytes). The resource allocation model is::

    capacity          = floor(total × overcommit ratio)
    free              = capacity − allocated          (never shown below zero)
    allocation ratio  = allocated / total             (above 1.0 means overcommitted)

Overcommit ratios default to **CPU 4.0** (most vCPUs idle most of the time, and the host kernel
shares cores between the ones that don't), **memory 1.0** (guest RAM promised twice ends in
swapping or an OOM kill) and **disk 1.0** (qcow2 overlays grow up to their virtual size).

Every VM holds one :class:`Reservation` from the moment it starts until it stops, crashes or
is destroyed; :class:`Inventory` adds them up. Two refusals must not be confused:

* a request larger than the host's whole *capacity* could never start, so it is refused at
  once with :class:`~corral.errors.InvalidSpec` (:meth:`Inventory.check_request`);
* a request larger than what is *free now* waits in the admission queue, or fails with
  "not enough capacity: memory (needs 512 MiB, 256 MiB free)" (:meth:`Inventory.shortages`,
  :func:`capacity_message`) when the user asked for no queueing.

Everything here is pure: the daemon and the simulator build an :class:`Inventory` from plain
values and call the same methods.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from corral.errors import AlreadyExists, InvalidSpec

#: The accounted resources, in the order messages name them.
KINDS = ("cpus", "memory", "disk")


@dataclass(frozen=True, slots=True)
class Resources:
    """An amount of each resource: vCPUs, memory bytes, disk bytes."""

    cpus: int = 0
    memory: int = 0
    disk: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpus + other.cpus, self.memory + other.memory,
                         self.disk + other.disk)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.cpus - other.cpus, self.memory - other.memory,
                         self.disk - other.disk)

    def fits_in(self, room: Resources) -> bool:
        """Whether every resource of ``self`` is at most the same resource of ``room``."""
        return (self.cpus <= room.cpus and self.memory <= room.memory
                and self.disk <= room.disk)

    def as_dict(self) -> dict[str, int]:
        return {"cpus": self.cpus, "memory": self.memory, "disk": self.disk}


@dataclass(frozen=True, slots=True)
class Overcommit:
    """How far each resource may be promised beyond what the host has.

    :raises InvalidSpec: when a ratio is not a positive finite number.
    """

    cpu: float = 4.0
    memory: float = 1.0
    disk: float = 1.0

    def __post_init__(self) -> None:
        for name in ("cpu", "memory", "disk"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise InvalidSpec(f"overcommit.{name}",
                                  f"{value!r} is not a ratio; give a number above 0, e.g. 1.0")

    def apply(self, total: Resources) -> Resources:
        """The capacity: ``floor(total × ratio)`` for each resource."""
        return Resources(math.floor(total.cpus * self.cpu),
                         math.floor(total.memory * self.memory),
                         math.floor(total.disk * self.disk))


@dataclass(frozen=True, slots=True)
class Reservation:
    """What one VM holds while it lives, and when it is expected to end (``None``: unknown)."""

    vm: str
    cpus: int
    memory: int
    disk: int = 0
    expected_end: float | None = None

    @property
    def resources(self) -> Resources:
        return Resources(self.cpus, self.memory, self.disk)


def describe(kind: str, amount: int) -> str:
    """An amount for a message: ``4 vCPUs``, ``512 MiB``, ``20 GiB``."""
    if kind == "cpus":
        return f"{amount} vCPU" + ("" if amount == 1 else "s")
    if amount >= 1 << 30 and amount % (1 << 30) == 0:
        return f"{amount >> 30} GiB"
    if amount % (1 << 20) == 0:
        return f"{amount >> 20} MiB"
    return f"{amount / (1 << 20):.1f} MiB"


@dataclass(frozen=True, slots=True)
class Shortage:
    """One resource a request needs more of than is free."""

    resource: str
    needed: int
    free: int

    def __str__(self) -> str:
        free = str(self.free) if self.resource == "cpus" else describe(self.resource, self.free)
        return f"{self.resource} (needs {describe(self.resource, self.needed)}, {free} free)"


def capacity_message(shortages: Iterable[Shortage]) -> str:
    """``not enough capacity: memory (needs 512 MiB, 256 MiB free)``, every short resource."""
    return "not enough capacity: " + ", ".join(str(s) for s in shortages)


class Inventory:
    """One host's resources and the reservations of its VMs.

    Built from the host's totals, its overcommit ratios and the reservations of the VMs that
    already run (after a daemon restart those may exceed a capacity that was lowered since;
    they are kept, and nothing more fits until enough of them end).

    :raises InvalidSpec: when a total is negative.
    :raises AlreadyExists: when two reservations name the same VM.
    """

    def __init__(self, total: Resources, ratios: Overcommit | None = None,
                 reservations: Iterable[Reservation] = ()) -> None:
        for kind in KINDS:
            if getattr(total, kind) < 0:
                raise InvalidSpec(f"total.{kind}", "a host total cannot be negative")
        self.total = total
        self.ratios = ratios or Overcommit()
        self.capacity = self.ratios.apply(total)
        self._held: dict[str, Reservation] = {}
        self._allocated = Resources()
        for r in reservations:
            self._add(r)

    @property
    def allocated(self) -> Resources:
        return self._allocated

    @property
    def free(self) -> Resources:
        """Capacity minus allocation, at least zero in each resource."""
        room = self.capacity - self._allocated
        return Resources(max(room.cpus, 0), max(room.memory, 0), max(room.disk, 0))

    @property
    def reservations(self) -> Mapping[str, Reservation]:
        return dict(self._held)

    def allocation_ratio(self) -> dict[str, float]:
        """``allocated / total`` for each resource (0.0 for a resource the host lacks)."""
        return {kind: (getattr(self._allocated, kind) / getattr(self.total, kind)
                       if getattr(self.total, kind) else 0.0) for kind in KINDS}

    def check_request(self, need: Resources) -> None:
        """Refuse a request that could never start on this host, however long it waited.

        :raises InvalidSpec: naming the resource, when ``need`` is negative or larger than the
            host's capacity (total × overcommit ratio).
        """
        for kind in KINDS:
            amount, cap = getattr(need, kind), getattr(self.capacity, kind)
            if amount < 0:
                raise InvalidSpec(kind, f"{amount} is negative")
            if amount > cap:
                raise InvalidSpec(kind, f"needs {describe(kind, amount)} but this host can never"
                                        f" give more than {describe(kind, cap)}; it would wait"
                                        " forever, so ask for less")

    def shortages(self, need: Resources) -> list[Shortage]:
        """Every resource of which ``need`` is more than is free; empty when it fits."""
        room = self.capacity - self._allocated
        return [Shortage(kind, getattr(need, kind), max(getattr(room, kind), 0))
                for kind in KINDS if getattr(need, kind) > getattr(room, kind)]

    def fits(self, need: Resources) -> bool:
        """Whether ``need`` fits in what is free now."""
        held, cap = self._allocated, self.capacity
        return (held.cpus + need.cpus <= cap.cpus and held.memory + need.memory <= cap.memory
                and held.disk + need.disk <= cap.disk)

    def reserve(self, reservation: Reservation) -> None:
        """Account a starting VM.

        :raises AlreadyExists: when the VM already holds a reservation.
        :raises ValueError: when it does not fit (a programming error: ask :meth:`fits`
            or :meth:`shortages` first, and tell the user :func:`capacity_message`).
        """
        if reservation.vm not in self._held and not self.fits(reservation.resources):
            raise ValueError(capacity_message(self.shortages(reservation.resources)))
        self._add(reservation)

    def release(self, vm: str) -> Reservation | None:
        """Give back what ``vm`` held; ``None`` when it held nothing.

        Idempotent, so a stop and a crash seen for the same VM release it once.
        """
        held = self._held.pop(vm, None)
        if held is not None:
            a = self._allocated
            self._allocated = Resources(a.cpus - held.cpus, a.memory - held.memory,
                                        a.disk - held.disk)
        return held

    def to_dict(self) -> dict[str, object]:
        """The figures ``corral host info`` shows."""
        return {
            "total": self.total.as_dict(),
            "capacity": self.capacity.as_dict(),
            "allocated": self._allocated.as_dict(),
            "free": self.free.as_dict(),
            "allocation_ratio": self.allocation_ratio(),
            "overcommit": {"cpu": self.ratios.cpu, "memory": self.ratios.memory,
                           "disk": self.ratios.disk},
            "reservations": len(self._held),
        }

    def _add(self, reservation: Reservation) -> None:
        if reservation.vm in self._held:
            raise AlreadyExists(f"VM '{reservation.vm}' already holds a reservation")
        self._held[reservation.vm] = reservation
        a = self._allocated
        self._allocated = Resources(a.cpus + reservation.cpus, a.memory + reservation.memory,
                                    a.disk + reservation.disk)
