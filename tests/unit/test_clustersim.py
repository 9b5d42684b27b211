"""corral simulate --hosts: the cluster's admission and placement over simulated hosts."""

from __future__ import annotations

import pytest

from corral.errors import InvalidSpec
from corral.perf.clustersim import simulate_cluster, table


def test_a_light_load_places_everything_at_once_and_a_heavy_one_queues() -> None:
    light = simulate_cluster(50, arrival_rate=1, service_mean=10, jobs=2000)
    assert light.placed_at_once + light.waited + light.never_placed == 2000
    assert light.waited == 0 and light.wait_max == 0
    assert 0 < light.alloc_mean < light.alloc_max <= 1
    heavy = simulate_cluster(50, arrival_rate=100, service_mean=60, jobs=2000)
    assert heavy.waited > 0 and heavy.wait_max > 0
    assert heavy.alloc_mean > light.alloc_mean
    assert "50 simulated hosts" in table(heavy)


def test_same_seed_same_run_and_pack_fills_fewer_hosts_fuller() -> None:
    a = simulate_cluster(30, 5, 20, 1000, seed=3)
    b = simulate_cluster(30, 5, 20, 1000, seed=3)
    assert (a.placed_at_once, a.waited, a.wait_mean) == (b.placed_at_once, b.waited,
                                                          b.wait_mean)
    pack = simulate_cluster(30, 5, 20, 1000, seed=3, weigher="pack")
    assert pack.alloc_max >= a.alloc_max and pack.alloc_min <= a.alloc_min


def test_bad_figures_are_refused() -> None:
    with pytest.raises(InvalidSpec):
        simulate_cluster(0, 1, 1, 10)
    with pytest.raises(InvalidSpec):
        simulate_cluster(10, -1, 1, 10)
