"""Sizes as users write them (``256M``, ``2G``, ``1.5GiB``, ``512``) and as QEMU wants them."""

from __future__ import annotations

import re
from fractions import Fraction

from corral.errors import InvalidSpec

_UNITS = {"": 1 << 20, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"^\s*(\d{1,20}(?:\.\d{1,9})?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
MAX_SIZE = 1 << 60  # 1 EiB: larger than any disk or memory, small enough for every integer


def parse_size(field: str, value: str | int, *, default_unit: str = "M") -> int:
    """Return ``value`` in bytes. A bare number is in ``default_unit`` (MiB unless told).

    :raises InvalidSpec: naming ``field`` when the value is not a size.
    """
    if isinstance(value, bool):
        raise InvalidSpec(field, f"{value!r} is not a size; use e.g. 256M or 2G")
    if isinstance(value, int):
        value = str(value)
    match = _SIZE.match(value) if isinstance(value, str) and len(value) <= 40 else None
    if not match:
        shown = str(value) if len(str(value)) <= 24 else str(value)[:24] + "…"
        raise InvalidSpec(field, f"'{shown}' is not a size; use a number with a unit K, M, G or"
                                 " T, e.g. 256M or 2G")
    number, unit = match.groups()
    unit = unit.lower() or default_unit.lower()
    size = int(Fraction(number) * _UNITS[unit])
    if size <= 0:
        raise InvalidSpec(field, f"'{value}' must be larger than zero")
    if size > MAX_SIZE:
        raise InvalidSpec(field, f"'{value}' is larger than 1 EiB")
    return size


def format_size(nbytes: int) -> str:
    """The shortest exact way to write ``nbytes`` (``256M``, ``2G``), else MiB rounded."""
    for unit, scale in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if nbytes >= scale and nbytes % scale == 0:
            return f"{nbytes // scale}{unit}"
    return f"{nbytes / (1 << 20):.1f}M"
