"""Performance models: what a workload will wait, by formula and by simulation.

* :mod:`~corral.perf.queueing`: closed forms for M/M/1, M/M/c (Erlang C) and M/G/1
  (Pollaczek–Khinchine);
* :mod:`~corral.perf.simulate`: a discrete-event simulation (simpy) of a workload or a
  recorded trace through the scheduler's own admission queue, per policy. It is not imported
  here, so the formulas are usable without simpy.
"""

from corral.perf.queueing import Figures, erlang_c, mg1, mm1, mmc

__all__ = ["Figures", "erlang_c", "mg1", "mm1", "mmc"]
