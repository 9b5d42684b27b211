"""Properties of what users type: names, sizes, durations, URL segments and token texts.
Each parser, on any input, either gives a value within its rule or raises the one clear
error (``InvalidSpec``, ``Unauthorized``), never anything else."""

from __future__ import annotations

import re
import types
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.domain.sizes import MAX_DURATION, MAX_SIZE, format_size, parse_duration, parse_size
from corral.domain.specs import check_name
from corral.errors import InvalidSpec, Unauthorized
from corral.service.projects import Tokens
from corral.store.db import Store
from corral.wire import seg

RULE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
names = st.from_regex(RULE, fullmatch=True)


@given(st.text(max_size=40))
def test_a_name_is_accepted_exactly_when_it_follows_the_rule(text: str) -> None:
    try:
        assert check_name(text) == text
    except InvalidSpec as err:
        assert err.field == "name" and "\n" not in err.message.replace(text, "")
        assert not RULE.fullmatch(text)
    else:
        assert RULE.fullmatch(text)


@given(names, st.sampled_from(["\n", "\r\n", " ", "\x00", "/", "."]))
def test_a_name_with_anything_after_it_is_refused(name: str, tail: str) -> None:
    for text in (name + tail, tail + name):
        try:
            check_name(text)
        except InvalidSpec:
            continue
        raise AssertionError(f"{text!r} was accepted")


@given(names)
def test_every_valid_name_is_one_url_segment(name: str) -> None:
    quoted = seg(name)
    assert "/" not in quoted and urllib.parse.unquote(quoted) == name


@given(st.text(max_size=300))
def test_any_text_is_one_safe_segment_or_refused(text: str) -> None:
    try:
        quoted = seg(text)
    except InvalidSpec:
        return
    assert "/" not in quoted and "\r" not in quoted and "\n" not in quoted
    assert urllib.parse.unquote(quoted) == text


@given(st.integers(1, 1 << 20), st.sampled_from(sorted(UNITS)), st.sampled_from(["", "B", "iB"]),
       st.booleans())
def test_sizes_mean_what_they_say(n: int, unit: str, suffix: str, lower: bool) -> None:
    text = f"{n}{unit.lower() if lower else unit}{suffix}"
    assert parse_size("size", text) == n * UNITS[unit]


@given(st.integers(1, MAX_SIZE >> 10))
def test_format_size_reads_back(kib: int) -> None:
    nbytes = kib << 10
    assert parse_size("size", format_size(nbytes)) == nbytes


@given(st.one_of(st.text(max_size=50), st.integers(-(1 << 70), 1 << 70)))
def test_any_size_is_in_range_or_refused(value: str | int) -> None:
    try:
        size = parse_size("memory", value)
    except InvalidSpec as err:
        assert err.field == "memory"
    else:
        assert 0 < size <= MAX_SIZE


@given(st.integers(1, 10000), st.sampled_from(["s", "m", "h", "d", "w", ""]))
def test_durations_mean_what_they_say(n: int, unit: str) -> None:
    scale = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "": 86400}[unit]
    if n * scale > MAX_DURATION:
        return
    assert parse_duration("expires", f"{n}{unit}") == n * scale


@given(st.text(max_size=30))
def test_any_duration_is_in_range_or_refused(text: str) -> None:
    try:
        seconds = parse_duration("expires", text)
    except InvalidSpec as err:
        assert err.field == "expires"
    else:
        assert 0 < seconds <= MAX_DURATION


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tokens]:
    """The token slice on a real store that holds one valid token."""
    store = Store(Path(tmp_path_factory.mktemp("tokens")) / "corral.db")
    slice_ = Tokens(types.SimpleNamespace(db=store))  # type: ignore[arg-type]
    secret = slice_.create("real", "viewer", "default")["secret"]
    assert slice_.authenticate(secret).name == "real"
    yield slice_
    store.close()


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(max_size=250), st.builds(lambda i, s: f"crl_{i}_{s}",
                                                  st.text(max_size=20), st.text(max_size=60))))
def test_any_presented_token_is_a_principal_or_401(tokens: Any, presented: str) -> None:
    try:
        who = tokens.authenticate(presented)
    except Unauthorized as err:
        assert "\n" not in err.message and err.status == 401
    else:
        raise AssertionError(f"{presented!r} was taken for {who}")
