"""A thousand hosts on paper: the cluster's admission and placement over simulated hosts
(``corral simulate --hosts N``), with the same code the leader runs.

Hosts and requests come from :func:`corral.scheduler.synthetic.synthetic` (sizes, zone and
GPU labels, affinity and anti-affinity groups); requests arrive as a Poisson process and
run for exponential times. Every arrival is placed at once by
:class:`~corral.scheduler.placement.Placer` when some host has room, else it joins the
cluster-wide queue; every end frees its host and the queue is tried again oldest first,
each request onto whichever host has room (what the leader does each round, see
:meth:`corral.service.cluster.Member.lead`). Requests that no host could ever take stay
queued and are counted apart.

Figures: queue wait (mean, 95th percentile, maximum, over the requests that waited or not),
how evenly memory is allocated across hosts (the minimum, mean and maximum allocation ratio,
sampled through the run and averaged), and the time one placement takes (mean and 99th
percentile, in microseconds).
"""

from __future__ import annotations

import heapq
import random
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

from corral.errors import InvalidSpec
from corral.scheduler.placement import Placer, Weigher
from corral.scheduler.synthetic import synthetic

SAMPLES = 100  # allocation snapshots through the run


@dataclass(frozen=True)
class ClusterRun:
    hosts: int
    jobs: int
    weigher: str
    placed_at_once: int
    waited: int
    never_placed: int
    wait_mean: float
    wait_p95: float
    wait_max: float
    alloc_min: float
    alloc_mean: float
    alloc_max: float
    place_us_mean: float
    place_us_p99: float
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def simulate_cluster(n_hosts: int, arrival_rate: float, service_mean: float, jobs: int,
                     seed: int = 1, weigher: Weigher = "spread") -> ClusterRun:
    """Run ``jobs`` requests through admission and placement on ``n_hosts`` hosts.

    :raises InvalidSpec: a count, rate or mean that is not positive.
    """
    for field, value in (("hosts", n_hosts), ("arrival-rate", arrival_rate),
                         ("service-mean", service_mean), ("jobs", jobs)):
        if not value > 0:
            raise InvalidSpec(field, f"{value} must be more than 0")
    wall = time.perf_counter()
    hosts, requests = synthetic(n_hosts, jobs, seed)
    rng = random.Random(seed + 1)
    placer = Placer(hosts, weigher)
    memory = [h.memory * h.ratios.memory for h in hosts]
    events: list[tuple[float, int, int]] = []  # (time, 0 end / 1 arrival, request)
    t = 0.0
    for i in range(jobs):
        t += rng.expovariate(arrival_rate)
        heapq.heappush(events, (t, 1, i))
    arrived: dict[int, float] = {}
    waits: list[float] = []
    queue: list[int] = []
    place_us: list[float] = []
    at_once = 0
    spread: list[tuple[float, float, float]] = []
    every = max(jobs // SAMPLES, 1)

    def place(i: int, now: float) -> bool:
        t0 = time.perf_counter()
        host = placer.place(requests[i], reasons=False).host
        place_us.append((time.perf_counter() - t0) * 1e6)
        if host is None:
            return False
        waits.append(now - arrived[i])
        heapq.heappush(events, (now + rng.expovariate(1 / service_mean), 0, i))
        return True

    while events:
        now, kind, i = heapq.heappop(events)
        if kind == 1:
            arrived[i] = now
            if place(i, now):
                at_once += 1
            else:
                queue.append(i)
            if i % every == 0:
                ratios = [1 - placer.free(h.name).memory / m for h, m in zip(hosts, memory,
                                                                             strict=True)]
                spread.append((min(ratios), statistics.fmean(ratios), max(ratios)))
        else:
            placer.release(requests[i].id)
            queue = [q for q in queue if not place(q, now)]
    return ClusterRun(
        hosts=n_hosts, jobs=jobs, weigher=weigher, placed_at_once=at_once,
        waited=len(waits) - at_once, never_placed=len(queue),
        wait_mean=statistics.fmean(waits) if waits else 0.0, wait_p95=_pct(waits, 0.95),
        wait_max=max(waits, default=0.0),
        alloc_min=statistics.fmean(s[0] for s in spread),
        alloc_mean=statistics.fmean(s[1] for s in spread),
        alloc_max=statistics.fmean(s[2] for s in spread),
        place_us_mean=statistics.fmean(place_us), place_us_p99=_pct(place_us, 0.99),
        seconds=time.perf_counter() - wall)


def table(run: ClusterRun) -> str:
    r = run
    return "\n".join([
        f"cluster: {r.hosts:,} simulated hosts, {r.jobs:,} requests, weigher {r.weigher} "
        f"(simulated in {r.seconds:.1f} s)",
        f"  placed at once          {r.placed_at_once:,}",
        f"  waited in the queue     {r.waited:,}",
        f"  never placed            {r.never_placed:,} (no host could ever take them)",
        f"  queue wait (s)          mean {r.wait_mean:.3f}  p95 {r.wait_p95:.3f}  "
        f"max {r.wait_max:.3f}",
        f"  memory allocation       min {r.alloc_min:.1%}  mean {r.alloc_mean:.1%}  "
        f"max {r.alloc_max:.1%} (across hosts, averaged over the run)",
        f"  one placement (µs)      mean {r.place_us_mean:.1f}  p99 {r.place_us_p99:.1f}",
    ])
