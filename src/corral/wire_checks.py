"""The checks every name and number a Client sends passes before it goes on the wire, and
the daemon's error answers as Corral's errors. Standard library only."""

from __future__ import annotations

from corral import errors
from corral.wire_json import loads

TYPE_CHECKING = False  # typing is slow to import; the CLI must start in milliseconds
if TYPE_CHECKING:
    from typing import Any

MAX_TIMEOUT = 86400.0  # the daemon refuses longer waits
# what a path segment may hold unquoted (every valid name): the hot path skips urllib
_UNRESERVED = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~")


def error(status: int, body: dict[str, Any]) -> errors.CorralError:
    return errors.from_dict(body, status)


def seg(name: object, field: str = "name") -> str:
    """``name`` as one URL path segment: checked, then percent-quoted, so that no name can
    reach another route or smuggle a second request (CR/LF).

    :raises InvalidSpec: an empty name, a control character, ``/``, ``.`` or ``..``.
    """
    if not isinstance(name, str) or not name:
        raise errors.InvalidSpec(field, "give a name")
    if len(name) > 255 or name in (".", "..") or "/" in name or \
            any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise errors.InvalidSpec(field, errors.not_a_name(name))
    if _UNRESERVED.issuperset(name):
        return name
    import urllib.parse

    return urllib.parse.quote(name, safe="")


def seconds(value: float | None, field: str = "timeout") -> float | None:
    """:raises InvalidSpec: unless ``value`` is None or a finite number in (0, a day]."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not 0 < value <= MAX_TIMEOUT:  # NaN fails every comparison
        raise errors.InvalidSpec(field, f"{value!r} is not a number of seconds in "
                                        f"(0, {MAX_TIMEOUT:g}]")
    return float(value)


def integer(value: int | None, field: str, low: int, high: int) -> int | None:
    """:raises InvalidSpec: unless ``value`` is None or an integer in [low, high]."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise errors.InvalidSpec(field, f"{value!r} is not an integer in [{low}, {high}]")
    return value


def url_of(route: str, query: dict[str, Any]) -> str:
    """The request target of ``route`` (under ``/v1``) with the query's given values."""
    params = {k: (str(v).lower() if isinstance(v, bool) else v)
              for k, v in query.items() if v is not None}
    if not params:
        return "/v1" + route
    import urllib.parse  # not on the hot path (no query)

    return "/v1" + route + "?" + urllib.parse.urlencode(params)


def checked(status: int, data: bytes) -> bytes:
    """``data``, unless ``status`` is an error: then the daemon's error, raised."""
    if status >= 400:
        try:  # (a 401/403/404/429 of the daemon raises its own class, see errors)
            decoded = loads(data) if data else {}
        except ValueError:
            decoded = {"message": data.decode(errors="replace")[:200]}
        raise error(status, decoded if isinstance(decoded, dict) else {})
    return data
