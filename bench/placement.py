"""Scheduler benchmark: placement speed, and what each queue policy costs on one workload.

    .venv/bin/python bench/placement.py [--hosts 1000] [--requests 10000] [--naive-requests N]
        [--reps 3] [--seed 1] [--json]

1. **Placement** of 10,000 requests on 1,000 synthetic hosts (target: under 1 s; the median
   of ``--reps`` runs), with both weighers, next to a naive baseline: a straightforward loop
   over all hosts per request (filter each, weigh the survivors, take the best), with no
   reasons kept. Both must choose the same hosts; the bench checks that they do.
   ``--naive-requests`` times the baseline on the first N requests only and scales the time
   up (it is linear: every request visits every host).
2. **Policies**: one simulated workload (Poisson arrivals at 2/s, exponential runtimes of mean
   1.2 s, 3 slots, 5,000 jobs, 3 owners) through fcfs, sjf, priority and fair, with the M/M/3
   closed form beside them.

Hosts: 8/16/32 vCPUs, 48/96/192 GiB, 0.5/1 TB, a zone label of four, 10% with a GPU label.
Requests: 1-8 vCPUs, 1-16 GiB, 10-40 GiB of disk; 20% need a zone, 2% a GPU; 10% belong to
one of 200 groups of about 5 VMs, a quarter of them affinity groups, the rest anti-affinity.
That fills about half the cluster's vCPUs and memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from corral.cli.models import policy_table
from corral.perf.queueing import mmc
from corral.perf.simulate import Workload, compare, host_for
from corral.scheduler.placement import Host, PlacementRequest, Placer, Weigher
from corral.scheduler.resources import Resources
from corral.scheduler.synthetic import synthetic

GiB = 1 << 30


def naive_placement(hosts: list[Host], requests: Sequence[PlacementRequest],
                    weigher: Weigher) -> list[str | None]:
    """The baseline: for every request, filter every host and weigh the ones that pass."""
    caps = [h.ratios.apply(Resources(h.cpus, h.memory, h.disk)) for h in hosts]
    free = [[c.cpus, c.memory, c.disk] for c in caps]
    members: dict[str, set[int]] = {}
    chosen: list[str | None] = []
    for r in requests:
        together = members.get(r.affinity) if r.affinity else None
        best: tuple[int, int] | None = None
        for i, h in enumerate(hosts):
            cpus, memory, disk = free[i]
            if cpus < r.cpus or memory < r.memory or disk < r.disk:
                continue
            if any(h.labels.get(k) != v for k, v in r.labels.items()):
                continue
            if r.anti_affinity and i in members.get(r.anti_affinity, ()):
                continue
            if together and i not in together:
                continue
            key = (-memory if weigher == "spread" else memory, i)
            if best is None or key < best:
                best = key
        if best is None:
            chosen.append(None)
            continue
        i = best[1]
        free[i][0] -= r.cpus
        free[i][1] -= r.memory
        free[i][2] -= r.disk
        for group in {g for g in (r.affinity, r.anti_affinity) if g}:
            members.setdefault(group, set()).add(i)
        chosen.append(hosts[i].name)
    return chosen


def bench_placement(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    hosts, requests = synthetic(args.hosts, args.requests, args.seed)
    naive_n = min(args.naive_requests or args.requests, args.requests)
    out: dict[str, dict[str, Any]] = {}
    weighers: tuple[Weigher, ...] = ("spread", "pack")
    for weigher in weighers:
        times = []
        for _ in range(args.reps):
            placer = Placer(hosts, weigher)
            t0 = time.perf_counter()
            chosen = [placer.place(r, reasons=False).host for r in requests]
            times.append(time.perf_counter() - t0)
        fast = statistics.median(times)
        t0 = time.perf_counter()
        reference = naive_placement(hosts, requests[:naive_n], weigher)
        naive = (time.perf_counter() - t0) * args.requests / naive_n
        if chosen[:naive_n] != reference:
            sys.exit(f"{weigher}: the placer chose other hosts than the naive loop")
        out[weigher] = {"seconds": fast, "naive_seconds": naive, "speedup": naive / fast,
                        "placed": sum(h is not None for h in chosen),
                        "naive_extrapolated": naive_n < args.requests}
    return out


def bench_policies(seed: int) -> tuple[str, dict[str, object]]:
    spec = Workload(arrival_rate=2.0, service_mean=1.2, jobs=5000, owners=3, seed=seed)
    jobs = spec.generate()
    results = compare(jobs, host_for(jobs, 3), "fcfs,sjf,priority,fair")
    theory = mmc(spec.arrival_rate, 1 / spec.service_mean, 3)
    return policy_table(results, theory), {"theory": theory.as_dict(),
                                           "policies": [r.as_dict() for r in results]}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--hosts", type=int, default=1000)
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--naive-requests", type=int, metavar="N",
                   help="time the naive baseline on the first N requests and scale up")
    p.add_argument("--reps", type=int, default=3, help="time the placer N times (median)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)

    placement = bench_placement(args)
    table, policies = bench_policies(args.seed)
    if args.json:
        print(json.dumps({"hosts": args.hosts, "requests": args.requests,
                          "placement": placement, "policies": policies}, indent=2))
        return 0
    print(f"placement: {args.requests:,} requests on {args.hosts:,} hosts (target < 1 s)")
    for weigher, r in placement.items():
        note = " (extrapolated)" if r["naive_extrapolated"] else ""
        print(f"  {weigher:<7} {r['seconds']:6.3f} s   naive scan {r['naive_seconds']:7.2f} s"
              f"{note}   {r['speedup']:5.0f}× faster   placed {r['placed']:,}")
    print("\npolicies: Poisson arrivals 2/s, exponential runtimes of mean 1.2 s, 3 slots, "
          "5,000 jobs")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
