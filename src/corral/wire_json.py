"""JSON read and written without importing :mod:`json`, for the CLI's quick path
(:mod:`corral.cli.quick`) and the remotes file: ``import json`` pulls in ``re``, ``enum``,
``functools`` and ``collections``, which cost a ``corral list`` more than its request.

:func:`loads` is the C scanner ``json.loads`` itself runs (``_json``), set up as
``json.JSONDecoder()`` sets it up; :func:`dumps` writes what ``json.dumps(value, indent=2,
sort_keys=True)`` writes for every value :func:`loads` gives (tests/unit/test_cli_lean.py
compares them). Anything unusual (a byte-order mark, UTF-16, a malformed text) is handed to
:mod:`json` itself, which then gives the answer or raises its own error.
"""

from __future__ import annotations

from _json import encode_basestring_ascii, make_scanner

TYPE_CHECKING = False  # typing is slow to import; the CLI must start in milliseconds
if TYPE_CHECKING:
    from typing import Any

_INF = float("inf")
_SPACE = " \t\n\r"  # JSON's whitespace


class _Decoder:
    """What ``_json.make_scanner`` reads off a ``json.JSONDecoder()``: its defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"NaN": float("nan"), "Infinity": _INF, "-Infinity": -_INF}.__getitem__


_scan = make_scanner(_Decoder())  # type: ignore[arg-type]  # (a duck-typed context)


def loads(data: bytes) -> Any:
    """The value of the JSON document ``data``, as ``json.loads(data)`` gives it.

    :raises ValueError: (``json.JSONDecodeError``) it is not JSON.
    """
    if data[:1] in (b"\xef", b"\xfe", b"\xff") or b"\x00" in data[:4]:
        return _slow(data)  # a byte-order mark or UTF-16/32: json detects the encoding
    try:
        text = data.decode("utf-8", "surrogatepass")
        start = len(text) - len(text.lstrip(_SPACE))
        value, end = _scan(text, start)
    except (StopIteration, ValueError):
        return _slow(data)
    if text[end:].strip(_SPACE):
        return _slow(data)  # extra data after the value
    return value


def _slow(data: bytes) -> Any:
    import json

    return json.loads(data)


def dumps(value: Any, indent: str = "") -> str:
    """``value`` (as :func:`loads` gives it) as ``json.dumps(value, indent=2,
    sort_keys=True)`` writes it; ``indent``: the current line's."""
    if isinstance(value, str):
        return encode_basestring_ascii(value)
    if value is None or value is True or value is False:
        return "null" if value is None else "true" if value else "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        if value != value:
            return "NaN"
        if value in (_INF, -_INF):
            return "Infinity" if value > 0 else "-Infinity"
        return float.__repr__(value)
    inner = indent + "  "
    if isinstance(value, list):
        if not value:
            return "[]"
        items = [inner + dumps(v, inner) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + indent + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [inner + encode_basestring_ascii(k) + ": " + dumps(v, inner)
                 for k, v in sorted(value.items())]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    raise TypeError(f"{type(value).__name__} is not a JSON value")
