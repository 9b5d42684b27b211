"""The queue policies on real VMs next to the simulator, for the same workload.

    .venv/bin/python bench/policies.py [--policies fcfs,sjf,priority,fair] [--slots 3]

Twelve batch jobs (``sleep`` of 1-4 s, declared as their expected runtime, three owners,
priorities 0-2) arrive 50 ms apart at a daemon that pretends to have ``--slots`` vCPUs with
no overcommit; each job is a warm start from a memory snapshot, so boot time does not drown
the queueing. For every policy the daemon's recorded trace is replayed through the simulator
(the same scheduler code), and the table shows mean and p95 response time, throughput and
utilisation, real beside simulated. Needs root, QEMU and the tiny image (CORRAL_IMAGE_PATH).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from corral.client import Client
from corral.errors import CorralError
from corral.perf.simulate import parse_trace, simulate
from corral.scheduler.resources import Resources
from corral.views import TraceEntry

RUNTIMES = [4.0, 1.0, 3.0, 1.0, 2.0, 4.0, 1.0, 3.0, 1.0, 2.0, 1.0, 3.0]
CORRAL = str(Path(sys.executable).parent / "corral")


@contextlib.contextmanager
def daemon(policy: str, slots: int, home: Path, keep: bool) -> Iterator[Client]:
    """A daemon with this policy on ``home``; ``keep``: the golden VM and its snapshot stay
    for the next policy's daemon (one boot and one snapshot for all the policies)."""
    env = {**os.environ, "CORRAL_HOME": str(home), "CORRAL_HOST_CPUS": str(slots),
           "CORRAL_CPU_RATIO": "1", "CORRAL_QUEUE_POLICY": policy,
           "CORRAL_SOCKET": str(home / "corral.sock")}
    proc = subprocess.Popen([CORRAL, "serve"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    client = Client(home / "corral.sock", timeout=None)
    try:
        for _ in range(200):
            with contextlib.suppress(CorralError):
                client.host_info()
                break
            time.sleep(0.05)
        try:
            yield client
        except BaseException:
            keep = False  # a failed run leaves nothing behind
            raise
    finally:
        with contextlib.suppress(CorralError):
            for vm in client.list():
                if not (keep and vm["name"] == "gold"):
                    client.destroy(vm["name"])
        client.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        if not keep:
            shutil.rmtree(home, ignore_errors=True)


def p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def ended(job: TraceEntry) -> tuple[float, float, float]:
    """A job's arrival, end and runtime (every job of the run has ended)."""
    end, runtime = job.get("end"), job.get("runtime")
    if end is None or runtime is None:
        raise RuntimeError(f"job {job['vm']} has not ended: {job}")
    return job["arrival"], end, runtime


def run_policy(policy: str, slots: int, home: Path, last: bool) -> dict[str, Any]:
    with daemon(policy, slots, home, keep=not last) as c:
        if not any(vm["name"] == "gold" for vm in c.list()):
            c.create("gold", start=True, wait=True)
            c.snapshot_create("gold", "ready", memory=True)
            c.stop("gold")
        c.batch(["true"], from_snapshot="gold:ready")  # builds the template, unmeasured

        def job(i: int, seconds: float) -> None:
            with Client(c.socket_path, timeout=None) as mine:
                mine.batch(["sleep", str(seconds)], from_snapshot="gold:ready",
                           name=f"job{i:02d}", expected_runtime=f"{seconds}s",
                           owner=f"user{i % 3}", priority=i % 3)

        threads = [threading.Thread(target=job, args=(i, s)) for i, s in enumerate(RUNTIMES)]
        for t in threads:
            t.start()
            time.sleep(0.05)
        for t in threads:
            t.join(600)
        trace = [j for j in c.trace() if j["vm"].startswith("job")]
    jobs = [ended(j) for j in trace]
    responses = [end - arrival for arrival, end, _ in jobs]
    span = max(end for _, end, _ in jobs) - min(arrival for arrival, _, _ in jobs)
    busy = sum(runtime for _, _, runtime in jobs)
    sim = simulate(parse_trace(trace), Resources(slots, 1 << 40, 0), policy)
    return {"policy": policy, "real_mean": statistics.mean(responses), "real_p95": p95(responses),
            "real_throughput": len(trace) / span, "real_utilisation": busy / (span * slots),
            "sim_mean": sim.mean_response, "sim_p95": sim.p95_response,
            "sim_throughput": sim.throughput, "sim_utilisation": sim.utilisation}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--policies", default="fcfs,sjf,priority,fair")
    p.add_argument("--slots", type=int, default=3)
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = p.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="crb-"))
    try:
        policies = args.policies.split(",")
        rows = [run_policy(policy, args.slots, home, i == len(policies) - 1)
                for i, policy in enumerate(policies)]
    finally:
        shutil.rmtree(home, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    print(f"{len(RUNTIMES)} batch jobs (warm starts) on {args.slots} slots; seconds; "
          "real | simulated from the recorded trace")
    print(f"{'policy':<9}{'mean response':>22}{'p95 response':>22}{'throughput /s':>20}"
          f"{'utilisation':>18}{'real/sim mean':>15}")
    for r in rows:
        print(f"{r['policy']:<9}{r['real_mean']:>11.2f} | {r['sim_mean']:<8.2f}"
              f"{r['real_p95']:>11.2f} | {r['sim_p95']:<8.2f}"
              f"{r['real_throughput']:>9.2f} | {r['sim_throughput']:<8.2f}"
              f"{r['real_utilisation']:>8.2f} | {r['sim_utilisation']:<7.2f}"
              f"{r['real_mean'] / r['sim_mean']:>12.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
