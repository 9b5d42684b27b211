"""The round-robin time slicer: who is paused and resumed when, and fairness."""

from __future__ import annotations

import random

import pytest

from corral.errors import InvalidSpec
from corral.scheduler.timeslice import Step, TimeSlicer, jain_index


def test_jain_index() -> None:
    assert jain_index([3, 3, 3]) == 1.0
    assert jain_index([1, 0, 0, 0]) == 0.25
    assert jain_index([]) == 1.0
    assert jain_index([0, 0]) == 1.0
    assert jain_index([1, 2]) == pytest.approx(0.9)


def test_nothing_is_paused_while_there_are_enough_slots() -> None:
    s = TimeSlicer(slots=3, quantum=1.0)
    assert s.tick(0, {"a", "b"}) == Step((), ("a", "b"))
    assert s.tick(5, {"a", "b"}) == Step()
    assert s.next_tick() is None
    assert s.run_time == {"a": 5.0, "b": 5.0}


def test_round_robin_rotates_after_each_quantum() -> None:
    s = TimeSlicer(slots=2, quantum=2.0)
    vms = {"a", "b", "c"}
    assert s.tick(0, vms) == Step((), ("a", "b"))
    assert s.waiting == ("c",)
    assert s.next_tick() == 2.0
    assert s.tick(1, vms) == Step()  # nobody's slice is over yet
    assert s.tick(2, vms) == Step(("a",), ("c",))  # a and b both expired; one slot is needed
    assert s.waiting == ("a",)
    assert s.tick(4, vms) == Step(("b",), ("a",))
    assert s.tick(6, vms) == Step(("c",), ("b",))
    assert s.run_time == {"a": 4.0, "b": 4.0, "c": 4.0}


def test_vms_join_paused_and_leave_without_a_pause() -> None:
    s = TimeSlicer(slots=1, quantum=1.0)
    assert s.tick(0, {"a"}) == Step((), ("a",))
    assert s.tick(0.5, {"a", "b"}) == Step()  # b waits for a's quantum
    assert s.tick(1, {"a", "b"}) == Step(("a",), ("b",))
    assert s.tick(1.5, {"a"}) == Step((), ("a",))  # b stopped: a resumes at once
    assert set(s.run_time) == {"a"}


def test_bad_settings() -> None:
    with pytest.raises(InvalidSpec):
        TimeSlicer(slots=0, quantum=1.0)
    with pytest.raises(InvalidSpec):
        TimeSlicer(slots=1, quantum=0.0)


def test_every_vm_progresses_fairly_under_jittery_ticks() -> None:
    """Ten VMs on three slots, ticks that come late, VMs that come and go."""
    rng = random.Random(3)
    s = TimeSlicer(slots=3, quantum=0.5)
    vms = {f"vm{i}" for i in range(10)}
    running: set[str] = set()
    now = 0.0
    progress = dict.fromkeys(vms, 0.0)  # a counter in each guest: work done while running
    while now < 300:
        step = s.tick(now, vms)
        assert not set(step.pause) & set(step.resume)
        running -= set(step.pause)
        running |= set(step.resume)
        assert running == set(s.running) and len(running) <= 3
        nxt = s.next_tick()
        assert nxt is not None
        later = max(nxt, now) + rng.uniform(0, 0.05)  # the daemon wakes a little late
        for vm in running:
            progress[vm] += later - now
        now = later
    assert min(progress.values()) > 0
    assert jain_index(progress.values()) >= 0.9
    assert s.fairness() >= 0.99
    assert s.fairness() == pytest.approx(jain_index(progress.values()), abs=0.01)
