"""Scheduling on real VMs: accounting, the admission queue, batch VMs, time slices, CPU caps,
and a small real workload against the simulator's prediction."""

from __future__ import annotations

import json
import os
import signal
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.client import Client
from corral.config import Paths
from corral.errors import InvalidSpec
from corral.host import cgroups
from corral.perf.simulate import parse_trace, simulate
from corral.scheduler.resources import Resources
from corral.scheduler.timeslice import jain_index

from .conftest import COUNTER, Daemon, running_daemon


def wait_state(d: Daemon, name: str, state: str, within: float = 30) -> str:
    deadline = time.monotonic() + within
    while (now := d.client.get(name)["state"]) != state and time.monotonic() < deadline:
        time.sleep(0.05)
    return str(now)


def allocated_cpus(d: Daemon) -> int:
    return int(d.client.host_info()["scheduler"]["capacity"]["allocated"]["cpus"])


@pytest.fixture(scope="module")
def two_slots(image_path: str) -> Iterator[Daemon]:
    with running_daemon(image_path, CORRAL_HOST_CPUS="2", CORRAL_CPU_RATIO="1") as d:
        yield d


def test_accounting_and_the_admission_queue(two_slots: Daemon) -> None:
    d, c = two_slots, two_slots.client
    assert allocated_cpus(d) == 0
    c.create("a", start=True, wait=True)
    c.create("b", start=True, wait=True)
    assert allocated_cpus(d) == 2
    info = d.cli("host", "info").stdout
    assert "cpus allocated:" in info and "2 of 2" in info

    # full: the third waits in the queue; --no-queue fails at once naming the resource
    c.create("q1", owner="ann")
    assert c.start("q1")["state"] == "queued"
    c.create("q2", owner="bob")
    assert c.start("q2")["state"] == "queued"
    res = d.cli("start", "q2")
    assert res.returncode == 5  # already queued
    c.create("nq")
    res = d.cli("start", "nq", "--no-queue")
    assert res.returncode == 9 and "not enough capacity" in res.stderr
    assert c.get("nq")["state"] == "defined"
    with pytest.raises(InvalidSpec):  # larger than the whole host: refused, never queued
        c.create("huge", cpus=3, start=True)
    assert "huge" not in [v["name"] for v in c.list()]
    queue = c.queue()
    assert [(e["position"], e["vm"]) for e in queue] == [(1, "q1"), (2, "q2")]
    assert "q1" in d.cli("queue").stdout

    # a daemon restart keeps the queue and its order
    d.stop()
    d.start()
    c = d.client
    assert [e["vm"] for e in c.queue()] == ["q1", "q2"]
    assert allocated_cpus(d) == 2

    # a queued VM can be cancelled; capacity freed by a crash starts the next one by itself
    assert c.stop("q2")["state"] == "defined"
    os.kill(c.get("a")["pid"], signal.SIGKILL)
    assert wait_state(d, "a", "crashed", 5) == "crashed"
    assert wait_state(d, "q1", "running", 30) == "running"
    assert allocated_cpus(d) == 2
    c.stop("b")
    assert allocated_cpus(d) == 1
    for name in ("a", "b", "q1", "q2", "nq"):
        c.destroy(name)
    assert allocated_cpus(d) == 0 and c.queue() == []


def test_batch_vm(two_slots: Daemon) -> None:
    d = two_slots
    res = d.cli("run", "--rm", "--expected-runtime", "10s", "--", "uname", "-m")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "x86_64"
    res = d.cli("run", "--rm", "--", "sh", "-c", "echo oops >&2; exit 3")
    assert res.returncode == 3 and res.stderr == "oops\n"
    assert d.client.list() == []
    res = d.cli("run", "--rm")
    assert res.returncode == 2 and "needs both --rm and a command" in res.stderr


def test_cpu_cap_limits_the_guest(two_slots: Daemon) -> None:
    c = two_slots.client
    c.create("capped", cpu_max="30%", cpu_weight=50, start=True, wait=True)
    pid = c.get("capped")["pid"]
    path = cgroups.group_path(Paths(two_slots.home).tag, "capped")
    assert path.is_dir() and str(pid) in (path / "cgroup.procs").read_text()
    c.exec("capped", ["sh", "-c", "(while :; do :; done) >/dev/null 2>&1 &"])
    t0, cpu0 = time.monotonic(), cgroups.cpu_seconds(pid)
    time.sleep(3)
    share = (cgroups.cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
    assert share < 0.42, share  # a busy guest held near 30% of one CPU
    c.destroy("capped")
    assert not path.exists()
    with pytest.raises(InvalidSpec):
        c.create("badcap", cpu_max="500%")


def test_time_slices_share_the_cpu_fairly(image_path: str) -> None:
    with running_daemon(image_path, CORRAL_TIMESLICE_SLOTS="1", CORRAL_QUANTUM="0.4") as d:
        c = d.client
        names = ["t1", "t2", "t3"]
        for name in names:
            c.create(name, timeslice=True, start=True, wait=True)
        for name in names:
            c.exec(name, ["sh", "-c", COUNTER])
        time.sleep(8)
        counts = [int(c.exec(n, ["cat", "/tmp/counter"])["stdout"]) for n in names]
        assert min(counts) > 10, counts  # every VM made progress
        fairness = jain_index(counts)
        print(f"time-sliced counters {counts}, Jain's index {fairness:.3f}")
        assert fairness >= 0.9, counts
        running = [c.get(n)["state"] for n in names].count("running")
        assert running <= 1  # one slot: never two at once
        for name in names:
            c.destroy(name)


SLOTS = 2  # vCPUs of the host in the workload test: batch jobs of one vCPU each


def run_workload(image_path: str, policy: str,
                 runtimes: list[float]) -> tuple[list[dict[str, float]], float, float]:
    """Run ``runtimes`` as batch jobs (warm starts), arriving in that order 0.1 s apart, on
    a host of ``SLOTS`` slots; return the recorded trace, the real mean response time and
    the simulator's for the same trace."""
    env = {"CORRAL_HOST_CPUS": str(SLOTS), "CORRAL_CPU_RATIO": "1",
           "CORRAL_QUEUE_POLICY": policy}
    with running_daemon(image_path, **env) as d:
        c = d.client
        c.create("gold", start=True, wait=True)
        c.snapshot_create("gold", "ready", memory=True)
        c.stop("gold")
        c.batch(["true"], from_snapshot="gold:ready")  # makes the template, unmeasured

        def job(i: int, seconds: float) -> None:
            with Client(d.socket, timeout=None) as client:
                client.batch(["sleep", str(seconds)], from_snapshot="gold:ready",
                             name=f"job{i:02d}", expected_runtime=f"{seconds}s")

        threads = [threading.Thread(target=job, args=(i, s)) for i, s in enumerate(runtimes)]
        for t in threads:
            t.start()
            time.sleep(0.1)  # arrivals in order, even on a busy machine
        for t in threads:
            t.join(300)
        trace = [j for j in c.trace() if j["vm"].startswith("job")]
        assert len(trace) == len(runtimes)
        real = statistics.mean(j["end"] - j["arrival"] for j in trace)
        sim = simulate(parse_trace(trace), Resources(SLOTS, 1 << 40, 0), policy)
        c.destroy("gold")
        return trace, real, sim.mean_response


def test_real_workload_matches_the_simulator(image_path: str, tmp_path: Path) -> None:
    # Two short jobs take both slots, two long ones queue, then six shorter ones: FCFS makes
    # the six wait behind the long ones, SJF runs them first. The simulator, given the trace
    # as it happened, must predict each policy's mean response. SJF's gain over FCFS shrinks
    # on a busy host: the short jobs' warm starts then run two at once and each takes longer
    # (beside one CPU hog, with 4 s long jobs, the simulator predicted 5.85 against 5.36 s
    # and the real runs took 6.45 and 6.21 s). So the long jobs last 6 s, and the real gain
    # is asked to be at least half of the predicted one whenever that is large enough to
    # tell from the runs' own noise (a second; real and predicted gains stayed within 0.3 s
    # of each other beside one or two CPU hogs).
    runtimes = [1.0, 1.0, 6.0, 6.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    measured, predictions = {}, {}
    for policy in ("fcfs", "sjf"):
        trace, real, predicted = run_workload(image_path, policy, runtimes)
        measured[policy], predictions[policy] = real, predicted
        (tmp_path / f"{policy}.json").write_text(json.dumps(trace))
        print(f"{policy}: real mean response {real:.2f} s, simulator {predicted:.2f} s")
        assert abs(real - predicted) / predicted < 0.25, (policy, real, predicted)
    gain = predictions["fcfs"] - predictions["sjf"]
    print(f"SJF's gain: real {measured['fcfs'] - measured['sjf']:.2f} s, predicted {gain:.2f} s")
    assert gain > 0, predictions  # as theory says, on the trace as it happened
    if gain >= 1.0:
        assert measured["fcfs"] - measured["sjf"] > gain / 2, (measured, predictions)
