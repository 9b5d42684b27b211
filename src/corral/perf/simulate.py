"""Discrete-event simulation of a workload through Corral's own admission queue.

A workload is a list of :class:`Job` (arrival, runtime, size, owner, priority). It is either
drawn by :class:`Workload`, with Poisson arrivals at rate λ and service times of a given mean
and coefficient of variation (gamma distributed: cv = 1 is exponential, cv = 0 is fixed), or
read from a recorded trace of real requests by :func:`parse_trace`.

The simulation (simpy) stands a host up as an :class:`~corral.scheduler.resources.Inventory`
and replays the jobs: an arrival submits a :class:`~corral.scheduler.queue.Request` to an
:class:`~corral.scheduler.queue.AdmissionQueue`, and at every arrival and every end
:func:`~corral.scheduler.queue.next_to_start` decides what starts. Those are the very objects
and functions the daemon uses, so the simulator measures the scheduler Corral runs, not a
model of it. Every policy replays the same list of jobs (common random numbers), so the
differences between policies are the policies', not the random draws'.

Figures per policy: mean and 95th percentile **response time** (arrival → end), mean and
maximum **wait** (arrival → start; the maximum shows starvation), the mean wait of each
owner (what ``fair`` evens out), **throughput** (jobs per second over the whole run) and
**utilisation** (the time-average share of the host's vCPUs allocated).

With 1-vCPU jobs on a host of c vCPUs (overcommit 1.0) and FCFS, the simulation is an M/M/c
queue (M/G/c for cv ≠ 1), so its figures must agree with :mod:`corral.perf.queueing`; the
unit tests check that they do.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import simpy

from corral.domain.sizes import parse_size
from corral.errors import InvalidSpec
from corral.scheduler.queue import (
    DEFAULT_AGING_RATE,
    POLICIES,
    AdmissionQueue,
    Request,
    next_to_start,
)
from corral.scheduler.resources import Inventory, Overcommit, Resources

_TRACE_FIELDS = {"arrival", "runtime", "cpus", "memory", "owner", "priority",
                 "expected_runtime", "id", "vm", "start", "end", "wait"}


@dataclass(frozen=True, slots=True)
class Job:
    """One request of a workload. ``expected_runtime`` is what the user declared, if anything."""

    arrival: float
    runtime: float
    cpus: int = 1
    memory: int = 0
    owner: str = "user"
    priority: int = 0
    expected_runtime: float | None = None


@dataclass(frozen=True, slots=True)
class Workload:
    """A synthetic workload: Poisson arrivals, gamma service times, random owners/priorities.

    Jobs need 1 vCPU each and declare their true runtime (SJF with perfect estimates).
    """

    arrival_rate: float
    service_mean: float
    service_cv: float = 1.0
    jobs: int = 5000
    owners: int = 3
    priorities: int = 4
    seed: int = 1

    def generate(self) -> list[Job]:
        """The jobs, the same for the same seed.

        :raises InvalidSpec: for a rate, mean or count that is not positive, or a negative cv.
        """
        for name in ("arrival_rate", "service_mean"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise InvalidSpec(name, f"{value!r} must be a number above 0")
        if not (math.isfinite(self.service_cv) and self.service_cv >= 0):
            raise InvalidSpec("service_cv", f"{self.service_cv!r} must be 0 or more")
        for name in ("jobs", "owners", "priorities"):
            if getattr(self, name) < 1:
                raise InvalidSpec(name, f"{getattr(self, name)} must be at least 1")
        rng = random.Random(self.seed)
        draw = _service_time(rng, self.service_mean, self.service_cv)
        jobs, t = [], 0.0
        for _ in range(self.jobs):
            t += rng.expovariate(self.arrival_rate)
            runtime = draw()
            jobs.append(Job(t, runtime, owner=f"owner{rng.randrange(self.owners)}",
                            priority=rng.randrange(self.priorities), expected_runtime=runtime))
        return jobs


def _service_time(rng: random.Random, mean: float, cv: float) -> Callable[[], float]:
    if cv == 0:
        return lambda: mean
    if cv == 1:
        return lambda: rng.expovariate(1 / mean)
    shape = 1 / cv ** 2
    return lambda: rng.gammavariate(shape, mean / shape)


@dataclass(frozen=True, slots=True)
class PolicyResult:
    """What one policy achieved on a workload. Times in seconds."""

    policy: str
    jobs: int
    mean_response: float
    p95_response: float
    mean_wait: float
    max_wait: float
    throughput: float
    utilisation: float
    owner_mean_wait: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_policies(text: str) -> list[tuple[str, bool]]:
    """``fcfs,sjf+backfill`` → ``[("fcfs", False), ("sjf", True)]``.

    :raises InvalidSpec: naming an unknown policy.
    """
    out = []
    for item in (p.strip() for p in text.split(",") if p.strip()):
        name, plus, extra = item.partition("+")
        if name not in POLICIES or (plus and extra != "backfill"):
            raise InvalidSpec("policies", f"'{item}' is not a policy; use " + ", ".join(POLICIES)
                                          + ", each optionally with +backfill")
        out.append((name, bool(plus)))
    if not out:
        raise InvalidSpec("policies", "give at least one policy")
    return out


def parse_trace(data: object) -> list[Job]:
    """Jobs from a recorded trace: a JSON list (or ``{"jobs": [...]}``) of objects with
    ``arrival`` and ``runtime`` (or ``start`` and ``end``), and optionally ``cpus`` (1),
    ``memory`` (bytes or a size like ``256M``; 0), ``owner``, ``priority`` (0) and
    ``expected_runtime`` (what the user declared; none by default). Arrivals are shifted so the
    first is at 0.

    :raises InvalidSpec: naming the first wrong entry and field.
    """
    if isinstance(data, Mapping) and set(data) == {"jobs"}:
        data = data["jobs"]
    if not isinstance(data, list) or not data:
        raise InvalidSpec("trace", "expected a non-empty JSON list of jobs")
    jobs = [_trace_job(i, item) for i, item in enumerate(data)]
    jobs.sort(key=lambda j: j.arrival)
    first = jobs[0].arrival
    return [Job(j.arrival - first, j.runtime, j.cpus, j.memory, j.owner, j.priority,
                j.expected_runtime) for j in jobs]


def _trace_job(i: int, item: object) -> Job:
    where = f"trace[{i}]"
    if not isinstance(item, Mapping):
        raise InvalidSpec(where, "expected an object")
    unknown = set(item) - _TRACE_FIELDS
    if unknown:
        raise InvalidSpec(f"{where}.{sorted(unknown)[0]}", "unknown field")
    if "runtime" not in item and not {"start", "end"} <= set(item):
        raise InvalidSpec(f"{where}.runtime", "missing; give runtime, or start and end")
    try:
        runtime = item["runtime"] if "runtime" in item else item["end"] - item["start"]
        expected = item.get("expected_runtime")
        memory = item.get("memory", 0)
        if isinstance(memory, str):
            memory = parse_size(f"{where}.memory", memory)
        job = Job(float(item["arrival"]), float(runtime), int(item.get("cpus", 1)),
                  int(memory), str(item.get("owner", "user")), int(item.get("priority", 0)),
                  None if expected is None else float(expected))
    except KeyError as err:
        raise InvalidSpec(f"{where}.{err.args[0]}", "missing") from err
    except (TypeError, ValueError) as err:
        raise InvalidSpec(where, f"not a job: {err}") from err
    if not (math.isfinite(job.arrival) and math.isfinite(job.runtime) and job.runtime > 0):
        raise InvalidSpec(where, "arrival must be a time and runtime a duration above 0")
    if job.cpus < 1 or job.memory < 0:
        raise InvalidSpec(where, "a job needs at least 1 CPU and memory of 0 or more")
    return job


def host_for(jobs: Sequence[Job], cpus: int, memory: int | None = None) -> Resources:
    """A simulated host of ``cpus`` vCPUs and ``memory`` bytes (default: enough for all jobs).

    :raises InvalidSpec: when ``cpus`` < 1.
    """
    if cpus < 1:
        raise InvalidSpec("slots", f"{cpus} is too few; give at least 1")
    return Resources(cpus, sum(j.memory for j in jobs) if memory is None else memory, 0)


def simulate(jobs: Sequence[Job], host: Resources, policy: str = "fcfs", *,
             backfill: bool = False, aging_rate: float = DEFAULT_AGING_RATE) -> PolicyResult:
    """Replay ``jobs``, in arrival order, on ``host`` (overcommit 1.0) under one policy.

    :raises InvalidSpec: for an unknown policy, no jobs, or a job larger than the host
        (it would wait forever).
    """
    if not jobs:
        raise InvalidSpec("jobs", "nothing to simulate")
    jobs = sorted(jobs, key=lambda j: j.arrival)
    queue = AdmissionQueue(policy, backfill=backfill, aging_rate=aging_rate)
    inventory = Inventory(host, Overcommit(1.0, 1.0, 1.0))
    for size in {(j.cpus, j.memory) for j in jobs}:
        inventory.check_request(Resources(*size))
    env = simpy.Environment()
    starts = [0.0] * len(jobs)
    ends = [0.0] * len(jobs)
    area = [0.0, 0.0]  # ∫ allocated vCPUs dt, time of the last change

    def account(now: float) -> None:
        area[0] += inventory.allocated.cpus * (now - area[1])
        area[1] = now

    def dispatch(now: float) -> None:
        for request in next_to_start(queue, inventory, now):
            account(now)
            queue.start(request.id)
            inventory.reserve(request.reservation(now))
            k = int(request.id)
            starts[k] = now
            env.timeout(jobs[k].runtime).callbacks.append(functools.partial(finish, k))

    def finish(k: int, _ended: simpy.Event) -> None:
        now = env.now
        account(now)
        inventory.release(str(k))
        ends[k] = now
        dispatch(now)

    def arrivals() -> Generator[simpy.Event, Any, None]:
        for k, job in enumerate(jobs):
            if job.arrival > env.now:
                yield env.timeout(job.arrival - env.now)
            now = env.now
            queue.submit(Request(str(k), str(k), job.owner, job.cpus, job.memory, 0,
                                 job.priority, job.expected_runtime, now))
            dispatch(now)

    env.process(arrivals())
    env.run()
    label = policy + ("+backfill" if backfill else "")
    return _result(label, jobs, starts, ends, area[0] / host.cpus)


def _result(label: str, jobs: Sequence[Job], starts: list[float], ends: list[float],
            busy: float) -> PolicyResult:
    n = len(jobs)
    response = sorted(e - j.arrival for j, e in zip(jobs, ends, strict=True))
    waits = [s - j.arrival for j, s in zip(jobs, starts, strict=True)]
    span = max(ends) - jobs[0].arrival
    by_owner: dict[str, list[float]] = {}
    for job, wait in zip(jobs, waits, strict=True):
        by_owner.setdefault(job.owner, []).append(wait)
    return PolicyResult(label, n, sum(response) / n, response[math.ceil(0.95 * n) - 1],
                        sum(waits) / n, max(waits), n / span if span > 0 else math.inf,
                        busy / span if span > 0 else 1.0,
                        {owner: sum(w) / len(w) for owner, w in sorted(by_owner.items())})


def compare(jobs: Sequence[Job], host: Resources, policies: str = "fcfs,sjf,priority,fair",
            *, aging_rate: float = DEFAULT_AGING_RATE) -> list[PolicyResult]:
    """:func:`simulate` for each of the comma-separated ``policies`` (``+backfill`` allowed).

    :raises InvalidSpec: as :func:`parse_policies` and :func:`simulate` do.
    """
    return [simulate(jobs, host, name, backfill=backfill, aging_rate=aging_rate)
            for name, backfill in parse_policies(policies)]
