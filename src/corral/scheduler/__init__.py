"""The scheduler: pure functions and small state machines over plain data, no I/O.

The same code runs inside the daemon and inside the simulator (:mod:`corral.perf.simulate`):

* :mod:`~corral.scheduler.resources`: host capacity under overcommit ratios, one reservation
  per running VM, and what is short when a VM does not fit;
* :mod:`~corral.scheduler.queue`: the admission queue of VMs waiting for capacity, its
  policies (fcfs, sjf, priority with aging, fair) and backfill;
* :mod:`~corral.scheduler.placement`: which host a VM goes to (filters, weighers, reasons);
* :mod:`~corral.scheduler.timeslice`: round-robin time slices for VMs that share the CPU.
"""

from corral.scheduler.placement import Host, Placement, PlacementRequest, Placer
from corral.scheduler.queue import (
    DEFAULT_AGING_RATE,
    POLICIES,
    AdmissionQueue,
    QueueEntry,
    Request,
    earliest_start,
    next_to_start,
)
from corral.scheduler.resources import (
    Inventory,
    Overcommit,
    Reservation,
    Resources,
    Shortage,
    capacity_message,
)
from corral.scheduler.timeslice import Step, TimeSlicer, jain_index

__all__ = [
    "DEFAULT_AGING_RATE", "POLICIES", "AdmissionQueue", "Host", "Inventory", "Overcommit",
    "Placement", "PlacementRequest", "Placer", "QueueEntry", "Request", "Reservation",
    "Resources", "Shortage", "Step", "TimeSlicer", "capacity_message", "earliest_start",
    "jain_index", "next_to_start",
]
