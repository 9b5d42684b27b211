"""Host inventory: capacity under overcommit ratios, and accounting that adds up."""

from __future__ import annotations

import random

import pytest

from corral.errors import AlreadyExists, InvalidSpec
from corral.scheduler.resources import (
    Inventory,
    Overcommit,
    Reservation,
    Resources,
    Shortage,
    capacity_message,
)

MiB = 1 << 20
GiB = 1 << 30


def host(cpus: int = 4, memory: int = 1 * GiB, disk: int = 10 * GiB) -> Inventory:
    return Inventory(Resources(cpus, memory, disk))


def test_default_ratios_give_capacity_and_ratio() -> None:
    inv = host()
    assert inv.ratios == Overcommit(4.0, 1.0, 1.0)
    assert inv.capacity == Resources(16, 1 * GiB, 10 * GiB)
    inv.reserve(Reservation("a", 6, 256 * MiB, 2 * GiB))
    assert inv.allocation_ratio() == {"cpus": 1.5, "memory": 0.25, "disk": 0.2}
    assert inv.free == Resources(10, 768 * MiB, 8 * GiB)
    facts = inv.to_dict()
    assert facts["overcommit"] == {"cpu": 4.0, "memory": 1.0, "disk": 1.0}
    assert facts["allocated"] == {"cpus": 6, "memory": 256 * MiB, "disk": 2 * GiB}


def test_configured_ratios_floor_the_capacity() -> None:
    inv = Inventory(Resources(3, 1000, 10), Overcommit(cpu=1.5, memory=0.5, disk=2.0))
    assert inv.capacity == Resources(4, 500, 20)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_ratio_is_refused(bad: float) -> None:
    with pytest.raises(InvalidSpec) as info:
        Overcommit(memory=bad)
    assert info.value.field == "overcommit.memory"


def test_shortage_names_the_short_resource() -> None:
    inv = host(cpus=1, memory=512 * MiB)
    inv.reserve(Reservation("a", 1, 256 * MiB))
    need = Resources(1, 512 * MiB, 0)
    assert not inv.fits(need)
    assert inv.shortages(need) == [Shortage("memory", 512 * MiB, 256 * MiB)]
    assert capacity_message(inv.shortages(need)) == \
        "not enough capacity: memory (needs 512 MiB, 256 MiB free)"
    both = inv.shortages(Resources(4, 1 * GiB, 0))
    assert capacity_message(both) == ("not enough capacity: cpus (needs 4 vCPUs, 3 free), "
                                      "memory (needs 1 GiB, 256 MiB free)")


def test_request_larger_than_the_host_is_refused_at_once() -> None:
    inv = host(cpus=2, memory=1 * GiB)
    inv.check_request(Resources(8, 1 * GiB, 0))  # exactly the capacity: may wait, may start
    with pytest.raises(InvalidSpec) as info:
        inv.check_request(Resources(1, 2 * GiB, 0))
    assert info.value.field == "memory"
    assert "wait forever" in info.value.message and "1 GiB" in info.value.message
    with pytest.raises(InvalidSpec) as info:
        inv.check_request(Resources(9, 0, 0))
    assert info.value.field == "cpus"
    with pytest.raises(InvalidSpec):
        inv.check_request(Resources(1, -1, 0))


def test_reserve_refuses_what_does_not_fit_and_duplicates() -> None:
    inv = host(cpus=1)
    inv.reserve(Reservation("a", 4, 0))
    with pytest.raises(ValueError, match="cpus"):
        inv.reserve(Reservation("b", 1, 0))
    with pytest.raises(AlreadyExists):
        inv.reserve(Reservation("a", 0, 0))
    assert set(inv.reservations) == {"a"}


def test_release_is_idempotent() -> None:
    inv = host()
    inv.reserve(Reservation("a", 2, 100 * MiB, 1 * GiB))
    assert inv.release("a") == Reservation("a", 2, 100 * MiB, 1 * GiB)
    assert inv.release("a") is None  # a crash seen after the stop releases nothing more
    assert inv.allocated == Resources()


def test_adopted_reservations_may_exceed_a_lowered_capacity() -> None:
    inv = Inventory(Resources(2, 1 * GiB, 0), Overcommit(cpu=1.0),
                    [Reservation("a", 2, 0), Reservation("b", 2, 0)])
    assert inv.allocation_ratio()["cpus"] == 2.0
    assert inv.free.cpus == 0
    assert not inv.fits(Resources(1, 0, 0))
    inv.release("a")
    assert not inv.fits(Resources(1, 0, 0))
    inv.release("b")
    assert inv.fits(Resources(2, 0, 0))


def test_accounting_adds_up_through_start_stop_and_crash() -> None:
    rng = random.Random(7)
    inv = host(cpus=8, memory=8 * GiB, disk=100 * GiB)
    alive: dict[str, Resources] = {}
    for step in range(2000):
        if alive and rng.random() < 0.45:
            vm = rng.choice(sorted(alive))
            inv.release(vm)  # stopped
            if rng.random() < 0.3:
                inv.release(vm)  # and the crash event seen afterwards
            del alive[vm]
        else:
            need = Resources(rng.randint(1, 4), rng.randint(1, 16) * 128 * MiB,
                             rng.randint(0, 10) * GiB)
            if inv.fits(need):
                inv.reserve(Reservation(f"vm{step}", need.cpus, need.memory, need.disk))
                alive[f"vm{step}"] = need
            else:
                assert inv.shortages(need)
        total = sum(alive.values(), Resources())
        assert inv.allocated == total
        assert inv.allocated.fits_in(inv.capacity)
        assert inv.free == inv.capacity - total
    for vm in list(alive):
        inv.release(vm)
    assert inv.allocated == Resources() and inv.free == inv.capacity
