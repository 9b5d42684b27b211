"""The old name of :mod:`corral.perf.queueing`: see :mod:`corral.models`."""

import sys

from corral.perf import queueing as _real
from corral.perf.queueing import *  # noqa: F403  (for type checkers; at run time _real replaces us)

sys.modules[__name__] = _real
