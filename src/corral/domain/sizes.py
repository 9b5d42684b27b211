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


_DURATION = re.compile(r"^\s*(\d{1,9})\s*([smhdw]?)\s*$", re.IGNORECASE)
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_DURATION = 10 * 366 * 86400  # ten years


def parse_duration(field: str, value: str) -> int:
    """``value`` (``90s``, ``15m``, ``12h``, ``30d``, ``2w``; a bare number is days) in
    seconds.

    :raises InvalidSpec: naming ``field`` unless it is a whole number of a unit, more than
        zero and at most ten years.
    """
    match = _DURATION.match(value) if isinstance(value, str) and len(value) <= 20 else None
    if not match:
        shown = str(value) if len(str(value)) <= 24 else str(value)[:24] + "…"
        raise InvalidSpec(field, f"'{shown}' is not a duration; use e.g. 12h, 30d or 2w")
    number, unit = match.groups()
    seconds = int(number) * _SECONDS[unit.lower() or "d"]
    if not 0 < seconds <= MAX_DURATION:
        raise InvalidSpec(field, f"'{value}' must be more than zero and at most ten years")
    return seconds
