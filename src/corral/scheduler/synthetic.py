"""A synthetic cluster for placement benchmarks and tests.

Hosts: 8/16/32 vCPUs, 48/96/192 GiB, 0.5/1 TB, a zone label of four, 10% with a GPU label.
Requests: 1-8 vCPUs, 1-16 GiB, 10-40 GiB of disk; 20% need a zone, 2% a GPU; 10% belong to
one of n/50 groups, a quarter of them affinity groups, the rest anti-affinity. With 10
requests per host that fills about half the cluster's vCPUs and memory. Seeded: the same
seed gives the same cluster.
"""

from __future__ import annotations

import random

from corral.scheduler.placement import Host, PlacementRequest

GiB = 1 << 30


def synthetic(n_hosts: int, n_requests: int, seed: int) -> tuple[list[Host],
                                                                  list[PlacementRequest]]:
    rng = random.Random(seed)
    hosts = []
    for i in range(n_hosts):
        labels = {"zone": rng.choice("abcd")}
        if rng.random() < 0.1:
            labels["gpu"] = "yes"
        hosts.append(Host(f"h{i}", rng.choice([8, 16, 32]), rng.choice([48, 96, 192]) * GiB,
                          rng.choice([500, 1000]) * GiB, labels))
    requests = []
    for i in range(n_requests):
        need: dict[str, str] = {}
        if rng.random() < 0.2:
            need["zone"] = rng.choice("abcd")
        if rng.random() < 0.02:
            need["gpu"] = "yes"
        group = rng.randrange(max(n_requests // 50, 1)) if rng.random() < 0.1 else None
        affinity = f"g{group}" if group is not None and group % 4 == 0 else None
        anti = f"g{group}" if group is not None and group % 4 else None
        if affinity:
            need.clear()  # a group that lives together cannot need different zones
        requests.append(PlacementRequest(f"r{i}", rng.choice([1, 2, 4, 8]),
                                         rng.choice([1, 2, 4, 8, 16]) * GiB,
                                         rng.choice([10, 20, 40]) * GiB, need, affinity, anti))
    return hosts, requests
