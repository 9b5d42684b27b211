"""The old name of :mod:`corral.perf.simulate`: see :mod:`corral.models`."""

import sys

from corral.perf import simulate as _real
from corral.perf.simulate import *  # noqa: F403  (for type checkers; at run time _real replaces us)

sys.modules[__name__] = _real
