"""Closed-form queueing models: what theory says a workload will wait.

Notation: **λ** arrival rate (requests per second), **μ** service rate of one server
(1 / mean runtime), **c** servers (VMs that may run at once), **S** a service time,
**ρ = λ / (cμ)** the utilisation. **W** is the mean response time (arrival to end),
**Wq** the mean wait (arrival to start), **L** and **Lq** the mean number in the system and in
the queue. A queue is stable only when ρ < 1; at ρ ≥ 1 work arrives faster than it can be
done and the queue grows without bound, so these functions refuse it.

**M/M/1**: Poisson arrivals, exponential service times, one server::

    Wq = ρ / (μ − λ)        W = 1 / (μ − λ)        L = ρ / (1 − ρ)

**M/M/c**: the same with c servers. An arrival waits only when all c are busy, which happens
with the **Erlang C** probability, for the offered load a = λ/μ::

    C(c, a) = (aᶜ/c! · c/(c − a)) / (Σₖ₌₀ᶜ⁻¹ aᵏ/k!  +  aᶜ/c! · c/(c − a))
    Wq = C(c, a) / (cμ − λ)        W = Wq + 1/μ

It is computed through the Erlang B recurrence ``B₀ = 1, Bₖ = a·Bₖ₋₁ / (k + a·Bₖ₋₁)`` and
``C = c·B / (c − a·(1 − B))``, which neither overflows nor loses precision for large c.

**M/G/1**: Poisson arrivals, one server, service times of any distribution with mean 1/μ and
coefficient of variation cv = σ(S)/E[S]. The **Pollaczek–Khinchine** formula::

    Wq = λ·E[S²] / (2(1 − ρ)) = (1 + cv²)/2 · ρ/(1 − ρ) · E[S]        W = Wq + E[S]

cv = 1 is M/M/1 again; cv = 0 (every job takes the same time) halves the wait; a heavy tail
(cv > 1) makes everybody wait for the long jobs.

In every model, **Little's law** gives L = λW and Lq = λWq, and in steady state the throughput
is λ: everything that arrives leaves.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from corral.errors import InvalidSpec


@dataclass(frozen=True, slots=True)
class Figures:
    """The steady-state figures of one model. Times in seconds, rates per second."""

    model: str
    arrival_rate: float
    service_rate: float
    servers: int
    utilisation: float
    wait_probability: float
    mean_wait: float
    mean_response: float
    throughput: float
    mean_queue_length: float
    mean_in_system: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _positive(field: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise InvalidSpec(field, f"{value!r} is not a rate; give a number above 0")


def _stable(arrival_rate: float, service_rate: float, servers: int) -> float:
    _positive("arrival_rate", arrival_rate)
    _positive("service_rate", service_rate)
    if servers < 1:
        raise InvalidSpec("servers", f"{servers} servers is too few; give at least 1")
    rho = arrival_rate / (servers * service_rate)
    if rho >= 1:
        raise InvalidSpec("arrival_rate", f"utilisation ρ = λ/(cμ) = {rho:.3g} ≥ 1: work arrives "
                                          "faster than it can be done and the queue grows "
                                          "without bound; lower the arrival rate or add servers")
    return rho


def _figures(model: str, lam: float, mu: float, c: int, rho: float, p_wait: float,
             wq: float, w: float) -> Figures:
    return Figures(model, lam, mu, c, rho, p_wait, wq, w, lam, lam * wq, lam * w)


def erlang_c(servers: int, offered_load: float) -> float:
    """Probability that an arrival waits in M/M/c with offered load a = λ/μ < c.

    :raises InvalidSpec: when ``servers`` < 1 or the load is not below ``servers``.
    """
    if servers < 1:
        raise InvalidSpec("servers", f"{servers} servers is too few; give at least 1")
    if not (0 <= offered_load < servers):
        raise InvalidSpec("arrival_rate", f"offered load {offered_load:.3g} Erlang is not below "
                                          f"{servers} servers: the queue grows without bound")
    b = 1.0
    for k in range(1, servers + 1):
        b = offered_load * b / (k + offered_load * b)
    return servers * b / (servers - offered_load * (1 - b))


def mm1(arrival_rate: float, service_rate: float) -> Figures:
    """M/M/1 figures.

    :raises InvalidSpec: for a rate that is not positive, or ρ ≥ 1.
    """
    rho = _stable(arrival_rate, service_rate, 1)
    wq = rho / (service_rate - arrival_rate)
    return _figures("M/M/1", arrival_rate, service_rate, 1, rho, rho, wq,
                    1 / (service_rate - arrival_rate))


def mmc(arrival_rate: float, service_rate: float, servers: int) -> Figures:
    """M/M/c figures through Erlang C.

    :raises InvalidSpec: for a rate that is not positive, fewer than 1 server, or ρ ≥ 1.
    """
    rho = _stable(arrival_rate, service_rate, servers)
    p_wait = erlang_c(servers, arrival_rate / service_rate)
    wq = p_wait / (servers * service_rate - arrival_rate)
    return _figures(f"M/M/{servers}", arrival_rate, service_rate, servers, rho, p_wait, wq,
                    wq + 1 / service_rate)


def mg1(arrival_rate: float, service_rate: float, service_cv: float) -> Figures:
    """M/G/1 figures through Pollaczek–Khinchine.

    :raises InvalidSpec: for a rate that is not positive, a negative cv, or ρ ≥ 1.
    """
    if not (math.isfinite(service_cv) and service_cv >= 0):
        raise InvalidSpec("service_cv", f"{service_cv!r} is not a coefficient of variation; "
                                        "give 0 or more (1 is exponential)")
    rho = _stable(arrival_rate, service_rate, 1)
    mean_s = 1 / service_rate
    wq = (1 + service_cv ** 2) / 2 * rho / (1 - rho) * mean_s
    return _figures("M/G/1", arrival_rate, service_rate, 1, rho, rho, wq, wq + mean_s)
