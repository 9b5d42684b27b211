"""pydantic's complaints about a value, in Corral's words: one text for each kind of
mistake (a name off the rule, a string too long, a number out of its bounds), whoever
parsed the value (the API's request bodies, a stack file, a VM's create request).

Also the rule for a name, in one place: VMs, networks, disks, pools, stacks … are named by
it (:func:`corral.errors.not_a_name` says it in words).
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Mapping

from corral.errors import CorralError, not_a_name

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,31}$"

# pydantic's bounds on a number, in words: its context key, "too ...", "give ..."
_BOUNDS = {"greater_than": ("gt", "small", "more than"),
           "greater_than_equal": ("ge", "small", "at least"),
           "less_than": ("lt", "large", "less than"),
           "less_than_equal": ("le", "large", "at most")}

# a value of the wrong type, in words: what it should have been
_NOT_A = {"bool_parsing": "true or false", "bool_type": "true or false",
          "int_parsing": "a whole number", "int_type": "a whole number",
          "int_from_float": "a whole number", "float_parsing": "a number",
          "float_type": "a number", "string_type": "text", "list_type": "a list",
          "dict_type": "a mapping (key: value)"}


def reason(first: Mapping[str, object]) -> str:
    """What is wrong, from one error of pydantic's ``ValidationError.errors()``."""
    msg = str(first.get("msg", "invalid"))
    ctx = first.get("ctx")
    ctx = ctx if isinstance(ctx, dict) else {}
    err = ctx.get("error")
    if isinstance(err, CorralError):  # raised by a validator of the spec: its message
        return err.message.split(": ", 1)[-1]
    kind = first.get("type")
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field missing"
    if ctx.get("pattern") == NAME_PATTERN:  # the rule, in words
        return not_a_name(first.get("input"))
    if kind == "string_too_long":
        given = len(str(first.get("input", "")))
        return f"{given} characters is too long; use at most {ctx.get('max_length')}"
    bound = _BOUNDS.get(str(kind))
    if bound is not None and bound[0] in ctx:
        key, what, give = bound
        limit = ctx[key]
        limit = f"{limit:g}" if isinstance(limit, float) else limit
        return f"{_shown(first.get('input'), str)} is too {what}; give {give} {limit}"
    if str(kind) in _NOT_A:
        return f"{_shown(first.get('input'), repr)} is not {_NOT_A[str(kind)]}"
    return msg.removeprefix("Value error, ")


def _shown(value: object, how: Callable[[object], str]) -> str:
    """``value`` in at most 40 characters; a list or mapping (a YAML file's aliases can nest
    them a billion elements deep) only by its first few elements."""
    text = how(value) if isinstance(value, str | int | float | bool | None) else _SHORT.repr(value)
    return text if len(text) <= 40 else text[:40] + "…"


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict = 2, 3, 3
