"""The pool-sizing model (Erlang C) against a simulation of the pool itself."""

from __future__ import annotations

import math

import pytest

from corral.errors import InvalidSpec
from corral.perf import pools


@pytest.mark.parametrize(("rate", "refill", "target"), [
    (2.0, 1.5, 0.05),    # a busy pool: refills overlap
    (0.5, 0.3, 0.01),    # a quiet one
    (10.0, 0.4, 0.02),   # many requests, fast refills
])
def test_recommendation_agrees_with_a_simulation_of_the_pool(
        rate: float, refill: float, target: float) -> None:
    rec = pools.recommend(rate, refill, target, runtime=30)
    assert rec.mean_wait <= target
    assert rec.running_vms == pytest.approx(rate * 30)
    smaller, _ = pools.mean_wait(rate, refill, rec.size - 1) if rec.size > 1 else (math.inf, 1)
    assert smaller > target  # the smallest that meets it
    for size in (rec.size - 1, rec.size, rec.size + 1):
        if size < 1 or rate * refill >= size:
            continue
        theory, p_wait = pools.mean_wait(rate, refill, size)
        sim = pools.simulate(rate, refill, size, requests=40000, seed=size)
        # the mean wait within 20% (or within a millisecond where both are tiny)
        assert abs(sim.mean_wait - theory) <= max(0.2 * theory, 1e-3), (size, sim, theory)
        assert abs(sim.miss_probability - p_wait) <= max(0.2 * p_wait, 0.01)


def test_bad_numbers_and_impossible_targets() -> None:
    with pytest.raises(InvalidSpec):
        pools.recommend(0, 1, 0.1)
    with pytest.raises(InvalidSpec):
        pools.recommend(1, float("nan"), 0.1)
    with pytest.raises(InvalidSpec):
        pools.recommend(100, 10, 0.0, max_size=50)
    assert pools.from_trace([0, 1, 2, 4], [1, 3]) == (0.75, 2.0)
    with pytest.raises(InvalidSpec):
        pools.from_trace([1, 1], [1])
