"""Sizing a warm pool with the queueing model, and a simulation of the pool to check it.

A warm pool of **c** clones hands one out at each request and starts making its
replacement at once; a replacement takes the **refill time R** (a warm start to ready,
measured by the daemon). A request that finds no clone waits for the next replacement. So
each of the c places of the pool is a server that is busy for R after every hand-out, and
with Poisson requests at rate **λ** and exponential refill times the pool *is* an M/M/c
queue with μ = 1/R (:mod:`corral.perf.queueing`): a request waits with the Erlang C
probability C(c, λR), which is also the pool's **miss** rate, and waits on average

    Wq = C(c, λR) / (c/R − λ)

:func:`recommend` gives the smallest c whose Wq meets a target. The runtime S of the VMs
handed out does not change the pool's size (a handed-out VM is no longer the pool's), but it
gives how many of them run at once on average, λ·S (Little's law), which the host must hold
beside the c idle clones.

:func:`simulate` replays the pool itself (not the queue formula) event by event with simpy:
clones, hand-outs, refills started at each hand-out, requests waiting in arrival order. The
tests check that the two agree.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from corral.errors import InvalidSpec
from corral.perf import queueing

MAX_POOL = 1024


@dataclass(frozen=True, slots=True)
class Recommendation:
    """The smallest pool that meets the target, with the figures that show why."""

    size: int
    arrival_rate: float
    refill_time: float
    target_wait: float
    mean_wait: float
    miss_probability: float
    offered_load: float
    running_vms: float | None  # λ·S: VMs handed out and still running, on average
    curve: list[dict[str, float]]  # mean wait and miss probability for sizes around it

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _finite(field: str, value: float, zero: bool = False) -> None:
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise InvalidSpec(field, f"{value!r} is not a usable number; give one above 0")


def mean_wait(arrival_rate: float, refill_time: float, size: int) -> tuple[float, float]:
    """Erlang C's (mean wait, probability of waiting) of a pool of ``size``; infinite when
    the pool cannot keep up (λR ≥ size)."""
    load = arrival_rate * refill_time
    if load >= size:
        return math.inf, 1.0
    f = queueing.mmc(arrival_rate, 1 / refill_time, size)
    return f.mean_wait, f.wait_probability


def recommend(arrival_rate: float, refill_time: float, target_wait: float,
              runtime: float | None = None, max_size: int = MAX_POOL) -> Recommendation:
    """The smallest pool whose mean wait (Erlang C) is at most ``target_wait`` seconds.

    :raises InvalidSpec: a number that is not positive, or no pool up to ``max_size`` meets
        the target.
    """
    _finite("arrival_rate", arrival_rate)
    _finite("refill_time", refill_time)
    _finite("target_wait", target_wait, zero=True)
    if runtime is not None:
        _finite("runtime", runtime)
    load = arrival_rate * refill_time
    size = max(1, math.floor(load) + 1)
    while size <= max_size:
        wait, p_wait = mean_wait(arrival_rate, refill_time, size)
        if wait <= target_wait:
            break
        size += 1
    else:
        raise InvalidSpec("target_wait", f"no pool of up to {max_size} clones keeps the mean "
                                         f"wait under {target_wait:g} s at {arrival_rate:g} "
                                         f"requests/s with {refill_time:g} s refills")
    curve = []
    for c in range(max(1, size - 3), size + 4):
        w, p = mean_wait(arrival_rate, refill_time, c)
        if math.isfinite(w):
            curve.append({"size": c, "mean_wait": w, "miss_probability": p})
    return Recommendation(size, arrival_rate, refill_time, target_wait, wait, p_wait, load,
                          None if runtime is None else arrival_rate * runtime, curve)


def from_trace(arrivals: Sequence[float], runtimes: Sequence[float]) -> tuple[float, float]:
    """(arrival rate, mean runtime) of a recorded trace.

    :raises InvalidSpec: fewer than two arrivals, or all at the same moment.
    """
    if len(arrivals) < 2 or max(arrivals) <= min(arrivals):
        raise InvalidSpec("trace", "a trace needs at least two requests at different times")
    rate = (len(arrivals) - 1) / (max(arrivals) - min(arrivals))
    return rate, (sum(runtimes) / len(runtimes) if runtimes else 0.0)


@dataclass(frozen=True, slots=True)
class PoolRun:
    """What a simulated pool did."""

    size: int
    requests: int
    mean_wait: float
    miss_probability: float
    max_wait: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def simulate(arrival_rate: float, refill_time: float, size: int, requests: int = 20000,
             seed: int = 1, refill_cv: float = 1.0) -> PoolRun:
    """Run a pool of ``size`` clones through ``requests`` Poisson requests; refills take
    ``refill_time`` on average (exponential at ``refill_cv`` 1, fixed at 0). The first
    tenth of the requests warms the pool up and is not counted.

    :raises InvalidSpec: a number that is not positive.
    """
    import simpy

    _finite("arrival_rate", arrival_rate)
    _finite("refill_time", refill_time)
    if size < 1 or requests < 10:
        raise InvalidSpec("size", "simulate a pool of at least 1 clone and 10 requests")
    rng = random.Random(seed)
    env = simpy.Environment()
    free = [size]
    waiting: deque[simpy.Event] = deque()
    waits: list[float] = []

    def refill_time_draw() -> float:
        return refill_time if refill_cv == 0 else rng.expovariate(1 / refill_time)

    def refill() -> Generator[simpy.Event, None, None]:
        yield env.timeout(refill_time_draw())
        if waiting:
            waiting.popleft().succeed()
            env.process(refill())  # the waiter takes the new clone at once: refill again
        else:
            free[0] += 1

    def request() -> Generator[simpy.Event, None, None]:
        t0 = env.now
        if free[0] > 0:
            free[0] -= 1
            env.process(refill())
        else:
            ev = env.event()
            waiting.append(ev)
            yield ev
        waits.append(env.now - t0)

    def arrivals() -> Generator[simpy.Event, None, None]:
        for _ in range(requests):
            yield env.timeout(rng.expovariate(arrival_rate))
            env.process(request())

    env.process(arrivals())
    env.run()
    counted = waits[len(waits) // 10:]
    return PoolRun(size, len(counted), sum(counted) / len(counted),
                   sum(1 for w in counted if w > 0) / len(counted), max(counted))
