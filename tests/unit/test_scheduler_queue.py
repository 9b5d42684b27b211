"""The admission queue: each policy's order, aging, fair turns, backfill, restart, bursts."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.errors import AlreadyExists, InvalidSpec, NotFound
from corral.scheduler.queue import (
    POLICIES,
    AdmissionQueue,
    Request,
    earliest_start,
    next_to_start,
)
from corral.scheduler.resources import Inventory, Overcommit, Reservation, Resources

MiB = 1 << 20
ONE = Overcommit(1.0, 1.0, 1.0)


def req(id_: str, arrival: float, owner: str = "alice", cpus: int = 1, memory: int = 0,
        priority: int = 0, runtime: float | None = None) -> Request:
    return Request(id_, id_, owner, cpus, memory, 0, priority, runtime, arrival)


# a: 0 alice 1cpu 30s p0 | b: 1 alice 2cpu 10s p5 | c: 2 bob 1cpu 10s p1
# d: 3 alice 1cpu  -  p9 | e: 4 carol 1cpu 5s p1
KNOWN = [req("a", 0, "alice", 1, priority=0, runtime=30),
         req("b", 1, "alice", 2, priority=5, runtime=10),
         req("c", 2, "bob", 1, priority=1, runtime=10),
         req("d", 3, "alice", 1, priority=9),
         req("e", 4, "carol", 1, priority=1, runtime=5)]


@pytest.mark.parametrize(("policy", "expected"), [
    ("fcfs", "abcde"),
    ("sjf", "ecbad"),      # shortest runtime; equal runtimes by size; unknown runtime last
    ("priority", "dbcea"),  # highest first; equal priority by arrival
    ("fair", "aceb" "d"),   # one per owner per round, owners by their oldest request
])
def test_each_policy_orders_a_known_set(policy: str, expected: str) -> None:
    queue = AdmissionQueue(policy, aging_rate=0.0)
    for r in reversed(KNOWN):  # submission order must not matter, arrival does
        queue.submit(r)
    assert "".join(r.id for r in queue.ordered(now=4)) == expected
    entries = queue.entries(now=10)
    assert [e.position for e in entries] == [1, 2, 3, 4, 5]
    assert {e.request.id: e.waiting for e in entries}["a"] == 10
    assert queue.position(expected[-1], now=4) == 5


def test_sjf_breaks_runtime_ties_by_size_then_memory() -> None:
    queue = AdmissionQueue("sjf")
    queue.submit(req("big", 0, cpus=2, runtime=10))
    queue.submit(req("fat", 1, cpus=1, memory=512 * MiB, runtime=10))
    queue.submit(req("small", 2, cpus=1, memory=256 * MiB, runtime=10))
    assert [r.id for r in queue.ordered(3)] == ["small", "fat", "big"]


def test_aging_raises_effective_priority_with_waiting_time() -> None:
    queue = AdmissionQueue("priority", aging_rate=0.5)
    old = queue.submit(req("old", 0, priority=0))
    assert queue.effective_priority(old, now=10) == 5.0
    queue.submit(req("new", 10, priority=4))
    assert [r.id for r in queue.ordered(10)] == ["old", "new"]


@pytest.mark.parametrize(("aging_rate", "starts_by"), [(1.0, 10.0), (0.0, None)])
def test_aging_prevents_starvation(aging_rate: float, starts_by: float | None) -> None:
    """One slot; a priority-10 request arrives every second; a priority-0 one waits."""
    queue = AdmissionQueue("priority", aging_rate=aging_rate)
    inv = Inventory(Resources(1, 0, 0), ONE)
    queue.submit(req("low", 0.0, priority=0, runtime=1))
    started_low = None
    for t in range(200):
        inv.release(f"hi{t - 1}")
        inv.release("low")
        queue.submit(req(f"hi{t}", float(t), priority=10, runtime=1))
        for r in next_to_start(queue, inv, float(t)):
            queue.start(r.id)
            inv.reserve(r.reservation(float(t)))
            if r.id == "low":
                started_low = float(t)
    assert started_low == starts_by


def test_fair_sharing_alternates_owners_despite_a_burst() -> None:
    queue = AdmissionQueue("fair")
    for i in range(10):
        queue.submit(req(f"a{i}", i * 0.1, "alice"))
    for i in range(3):
        queue.submit(req(f"b{i}", 5 + i, "bob"))
    served = []
    while queue:
        served.append(queue.start(queue.ordered(10)[0].id).owner)
    assert served[:6] == ["alice", "bob"] * 3
    assert served[6:] == ["alice"] * 7


def test_fair_gives_the_turn_to_the_owner_served_least_recently() -> None:
    queue = AdmissionQueue("fair")
    queue.submit(req("a1", 0, "alice"))
    queue.start("a1")
    queue.submit(req("a2", 1, "alice"))
    queue.submit(req("b1", 2, "bob"))  # later than a2, but alice just had her turn
    assert [r.id for r in queue.ordered(3)] == ["b1", "a2"]
    restored = AdmissionQueue.from_dict(json.loads(json.dumps(queue.to_dict())))
    assert [r.id for r in restored.ordered(3)] == ["b1", "a2"]


def test_without_backfill_a_blocked_head_blocks_everyone() -> None:
    inv = Inventory(Resources(4, 0, 0), ONE, [Reservation("x", 3, 0, 0, expected_end=10)])
    queue = AdmissionQueue("fcfs")
    queue.submit(req("head", 0, cpus=4, runtime=5))
    queue.submit(req("small", 1, cpus=1, runtime=5))
    assert next_to_start(queue, inv, now=0) == []


def test_backfill_starts_what_ends_before_the_head_can_start() -> None:
    inv = Inventory(Resources(4, 0, 0), ONE, [Reservation("x", 3, 0, 0, expected_end=10)])
    queue = AdmissionQueue("fcfs", backfill=True)
    queue.submit(req("head", 0, cpus=4, runtime=5))
    queue.submit(req("long", 1, cpus=1, runtime=20))  # would still hold a CPU at t=10
    queue.submit(req("short", 2, cpus=1, runtime=10))  # ends exactly when x does
    assert [r.id for r in next_to_start(queue, inv, now=0)] == ["short"]


def test_backfill_uses_what_the_head_leaves_over() -> None:
    inv = Inventory(Resources(8, 0, 0), ONE, [Reservation("x", 4, 0, 0, expected_end=10)])
    queue = AdmissionQueue("fcfs", backfill=True)
    queue.submit(req("head", 0, cpus=6, runtime=5))
    queue.submit(req("unknown", 1, cpus=2))  # no runtime: only the 2 CPUs head leaves over
    queue.submit(req("other", 2, cpus=2, runtime=50))
    assert [r.id for r in next_to_start(queue, inv, now=0)] == ["unknown"]


def test_no_backfill_when_the_head_start_cannot_be_known() -> None:
    inv = Inventory(Resources(4, 0, 0), ONE, [Reservation("x", 3, 0, 0, expected_end=None)])
    queue = AdmissionQueue("fcfs", backfill=True)
    queue.submit(req("head", 0, cpus=4))
    queue.submit(req("small", 1, cpus=1, runtime=1))
    assert earliest_start(Resources(4, 0, 0), inv, 0) is None
    assert next_to_start(queue, inv, now=0) == []


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Inventory, AdmissionQueue, float]:
    cpus = draw(st.integers(1, 8))
    memory = draw(st.integers(1, 8)) * 256
    now = 100.0
    running = []
    for i in range(draw(st.integers(0, 6))):
        end = draw(st.one_of(st.none(), st.floats(50.0, 300.0)))  # some overran (end < now)
        running.append(Reservation(f"r{i}", draw(st.integers(1, cpus)),
                                   draw(st.integers(0, memory // 256)) * 256, 0, end))
    inv = Inventory(Resources(cpus, memory, 0), ONE)
    for r in running:
        if inv.fits(r.resources):
            inv.reserve(r)
    queue = AdmissionQueue(draw(st.sampled_from(POLICIES)), backfill=True, aging_rate=0.01)
    for i in range(draw(st.integers(1, 12))):
        queue.submit(Request(
            f"q{i}", f"q{i}", draw(st.sampled_from(["a", "b", "c"])), draw(st.integers(1, cpus)),
            draw(st.integers(0, memory // 256)) * 256, 0, draw(st.integers(0, 5)),
            draw(st.one_of(st.none(), st.floats(1.0, 200.0))),
            draw(st.floats(0.0, now))))
    return inv, queue, now


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_backfill_never_delays_the_head(scenario: tuple[Inventory, AdmissionQueue, float]) -> None:
    inv, queue, now = scenario
    order = queue.ordered(now)
    queue.backfill = False
    plain = next_to_start(queue, inv, now)
    queue.backfill = True
    chosen = next_to_start(queue, inv, now)
    assert plain == order[:len(plain)]  # without backfill nobody overtakes
    assert chosen[:len(plain)] == plain
    taken = sum((r.resources for r in chosen), Resources())
    assert (inv.allocated + taken).fits_in(inv.capacity)
    assert len({r.id for r in chosen}) == len(chosen)
    if len(plain) == len(order):
        return
    head = order[len(plain)]
    assert head not in chosen
    before = earliest_start(head.resources, inv, now, [r.reservation(now) for r in plain])
    after = earliest_start(head.resources, inv, now, [r.reservation(now) for r in chosen])
    if before is None:
        assert chosen == plain
    else:
        assert after is not None and after[0] <= before[0]


def test_cancel_and_bad_requests() -> None:
    queue = AdmissionQueue()
    queue.submit(req("a", 0))
    with pytest.raises(AlreadyExists):
        queue.submit(req("a", 1))
    with pytest.raises(AlreadyExists):
        queue.submit(Request("other", "a", "alice", 1, 0))  # the same VM twice
    assert queue.cancel("a").id == "a" and len(queue) == 0
    for missing in (queue.cancel, queue.start, queue.get):
        with pytest.raises(NotFound):
            missing("a")
    with pytest.raises(InvalidSpec, match="cpus"):
        queue.submit(req("z", 0, cpus=0))
    with pytest.raises(InvalidSpec, match="expected_runtime"):
        queue.submit(req("z", 0, runtime=-1))
    with pytest.raises(InvalidSpec, match="policy"):
        AdmissionQueue("lottery")


def test_restart_keeps_the_queue_and_its_order() -> None:
    queue = AdmissionQueue("priority", backfill=True, aging_rate=0.1)
    for r in KNOWN:
        queue.submit(r)
    queue.start("d")
    saved = json.loads(json.dumps(queue.to_dict()))
    restored = AdmissionQueue.from_dict(saved)
    assert restored.ordered(50) == queue.ordered(50)
    assert (restored.policy, restored.backfill, restored.aging_rate) == ("priority", True, 0.1)
    assert restored.submit(req("f", 5)).seq == queue.submit(req("f", 5)).seq
    with pytest.raises(InvalidSpec, match="queue"):
        AdmissionQueue.from_dict({"version": 1, "policy": "fcfs"})
    saved["requests"].append(saved["requests"][0])
    with pytest.raises(InvalidSpec, match="twice"):
        AdmissionQueue.from_dict(saved)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("backfill", [False, True])
def test_a_burst_of_200_is_neither_lost_nor_duplicated(policy: str, backfill: bool) -> None:
    inv = Inventory(Resources(4, 4096 * MiB, 0), ONE)
    queue = AdmissionQueue(policy, backfill=backfill)
    submitted = set()
    for i in range(200):
        r = req(f"r{i}", 0.0, f"o{i % 7}", cpus=1 + i % 3, memory=(1 + i % 5) * 256 * MiB,
                priority=i % 4, runtime=float(1 + i % 9))
        queue.submit(r)
        submitted.add(r.id)
    cancelled = {queue.cancel("r13").id, queue.cancel("r150").id}
    started: list[str] = []
    running: dict[str, float] = {}
    t, rounds = 0.0, 0
    while queue or running:
        for r in next_to_start(queue, inv, t):
            queue.start(r.id)
            inv.reserve(r.reservation(t))
            running[r.vm] = t + (r.expected_runtime or 1.0)
            started.append(r.id)
        rounds += 1
        if rounds % 10 == 0:  # the daemon restarts now and then
            queue = AdmissionQueue.from_dict(json.loads(json.dumps(queue.to_dict())))
        assert running, "requests wait but nothing runs"
        t = min(running.values())
        for vm in [vm for vm, end in running.items() if end == t]:
            inv.release(vm)
            del running[vm]
    assert len(started) == len(set(started)) == 198
    assert set(started) == submitted - cancelled
