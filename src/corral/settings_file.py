"""The configuration file: TOML read with :mod:`tomllib`, each key turned into a setting's
dotted name (its tables and its name) and parsed by the setting's own parser.

:mod:`tomllib` tells no line for a key, so :func:`key_lines` finds each key's line in the
text itself (table headers, dotted keys, inline tables by their parent), and every error
names the file, the line and the reason. Stdlib only.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is slow to import; the CLI reads the file too
if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path
    from typing import Any, Protocol

    class Parser(Protocol):
        key: str

        def from_text(self, text: str, where: str) -> Any: ...

_HEADER = r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$"
_KEY = r"^\s*([A-Za-z0-9_.\-\"' ]+?)\s*="
# what a table's name may be for :func:`sets_nothing` to vouch for it (no dots, no quotes)
_CONTROL = [chr(c) for c in (*range(9), 11, 12, *range(14, 32), 127)]
_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


class FileError(ValueError):
    """The file cannot be used: ``key`` (None for the whole file) and a message that starts
    with ``FILE:LINE``."""

    def __init__(self, key: str | None, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


def _norm(part: str) -> str:
    return part.strip().strip("\"'").replace("-", "_")


def key_lines(text: str) -> dict[str, int]:
    """Each dotted key of the TOML ``text`` and the line (1-based) where it is set."""
    import re

    out: dict[str, int] = {}
    table: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        header = re.match(_HEADER, line)
        if header:
            table = [_norm(p) for p in header.group(1).split(".")]
            out.setdefault(".".join(table), number)
            continue
        key = re.match(_KEY, line)
        if key:
            out.setdefault(".".join(table + [_norm(p) for p in key.group(1).split(".")]),
                           number)
    return out


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, val in data.items():
        full = prefix + key.replace("-", "_")
        if isinstance(val, dict):
            out.update(_flatten(val, full + "."))
        else:
            out[full] = val
    return out


def _as_text(val: Any) -> str:
    """A TOML value as the text a setting's parser reads (as if from the environment)."""
    if isinstance(val, bool):
        return "true" if val else "false"
    if isinstance(val, int | float):
        return repr(val)
    if isinstance(val, str):
        return val
    if isinstance(val, list) and all(isinstance(v, str) for v in val):
        return ":".join(val)
    raise ValueError(f"a {type(val).__name__} is not a value of this setting")


def _line_of(lines: Mapping[str, int], key: str) -> int:
    while key:
        if key in lines:
            return lines[key]
        key = key.rpartition(".")[0]
    return 1


def sets_nothing(text: str) -> bool:
    """True when ``text`` is TOML that sets no key: blank lines, comments and distinct
    plain table headers (the file ``make install`` writes, all of it commented out), so the
    CLI need not import :mod:`tomllib` (and ``re``, ``typing``) to read it. False for
    anything else, which :mod:`tomllib` then reads."""
    if any(c in text for c in _CONTROL) or "\r" in text.replace("\r\n", ""):
        return False  # TOML allows these in no comment (a carriage return only before \n)
    tables: set[str] = set()
    for line in text.replace("\r\n", "\n").split("\n"):
        body = line.strip(" \t")
        if not body or body[0] == "#":
            continue
        name, bracket, rest = body[1:].partition("]")
        rest = rest.lstrip(" \t")
        name = name.strip(" \t")
        if body[0] != "[" or not bracket or (rest and rest[0] != "#") or not name or \
                not _BARE.issuperset(name) or name in tables:
            return False
        tables.add(name)
    return True


def read(path: Path | str, settings: Mapping[str, Parser]) -> dict[str, tuple[Any, str]]:
    """The settings the file at ``path`` sets: ``key -> (value, "FILE:LINE")``.

    :raises FileError: the file cannot be read, is not TOML, names an unknown setting, or
        holds a value that does not parse.
    """
    try:
        with open(path) as f:
            text = f.read()
    except OSError as err:
        raise FileError(None, f"{path}: cannot read the configuration file: "
                              f"{err.strerror}") from err
    if sets_nothing(text):
        return {}
    import re
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        at = re.search(r"\(at line (\d+), column \d+\)", str(err))
        reason = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(err)) or "not TOML"
        raise FileError(None, f"{path}:{at.group(1) if at else 1}: {reason}") from err
    lines = key_lines(text)
    out: dict[str, tuple[Any, str]] = {}
    for key, val in _flatten(data).items():
        where = f"{path}:{_line_of(lines, key)}"
        setting = settings.get(key)
        if setting is None:
            import difflib

            close = difflib.get_close_matches(key, list(settings), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise FileError(key, f"{where}: unknown setting '{key}'{hint}")
        try:
            text_val = _as_text(val)
        except ValueError as err:
            raise FileError(key, f"{where}: {key}: {err}") from err
        try:
            out[key] = (setting.from_text(text_val, where), where)
        except ValueError as err:
            raise FileError(key, str(err)) from err
    return out
