"""``TypedDict`` and ``NotRequired`` as pydantic wants them (``typing_extensions`` before
Python 3.12), and the body of an error answer, which other views embed."""

from __future__ import annotations

import sys
from typing import Any

if sys.version_info >= (3, 12):
    from typing import NotRequired, TypedDict
else:
    from typing import NotRequired

    from typing_extensions import TypedDict


class Error(TypedDict):
    """The body of every error answer; ``facts`` depend on the kind (see corral.errors)."""

    error: str
    kind: str
    message: str
    facts: dict[str, Any]


__all__ = ["Error", "NotRequired", "TypedDict"]
