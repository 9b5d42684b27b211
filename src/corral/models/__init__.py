"""The old name of :mod:`corral.perf` (performance models), kept only until ``corral.cli``
imports the new name. Nothing else imports it; delete this package with the CLI's last use.

``corral.models.queueing`` and ``corral.models.simulate`` are the very module objects of
``corral.perf`` (each stub puts the real module in its place), so nothing is defined twice.
"""

from corral.perf import Figures, erlang_c, mg1, mm1, mmc

__all__ = ["Figures", "erlang_c", "mg1", "mm1", "mmc"]
