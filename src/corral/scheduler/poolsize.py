"""Sizing a warm pool: the smallest number of clones whose mean wait meets a target.

A warm pool of **c** clones hands one out at each request and starts making its
replacement at once; a replacement takes the **refill time R** (a warm start to ready). A
request that finds no clone waits for the next replacement. So each place of the pool is a
server busy for R after every hand-out, and with Poisson requests at rate **λ** and
exponential refills the pool is an M/M/c queue with μ = 1/R: a request waits with the
Erlang C probability C(c, a) for the offered load a = λR (also the pool's **miss** rate), and
on average ``Wq = C(c, a) / (c/R − λ)``.

Pure (the daemon applies it for ``--autosize``); :mod:`corral.perf.pools` checks it against
a simulation of the pool, and :mod:`corral.perf.queueing` holds the same formula for M/M/c.
The runtime S of the VMs handed out does not change the pool's size (a VM handed out is no
longer the pool's), but gives how many of them run at once on average, λ·S (Little's law).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from corral.errors import InvalidSpec

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
    b = 1.0  # Erlang B by its recurrence, then C: neither overflows for large pools
    for k in range(1, size + 1):
        b = load * b / (k + load * b)
    p_wait = size * b / (size - load * (1 - b))
    return p_wait / (size / refill_time - arrival_rate), p_wait


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
