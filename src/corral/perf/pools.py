"""A simulation of a warm pool, to check the sizing model of
:mod:`corral.scheduler.poolsize` (Erlang C) against, and the arrival rate of a trace.

:func:`simulate` replays the pool itself (not the queue formula) event by event with simpy:
clones, hand-outs, refills started at each hand-out, requests waiting in arrival order. The
tests check that the model and the simulation agree.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from corral.errors import InvalidSpec
from corral.scheduler.poolsize import MAX_POOL, Recommendation, mean_wait, recommend

__all__ = ["MAX_POOL", "PoolRun", "Recommendation", "from_trace", "mean_wait", "recommend",
           "simulate"]


def _finite(field: str, value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise InvalidSpec(field, f"{value!r} is not a usable number; give one above 0")


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
