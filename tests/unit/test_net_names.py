"""Linux names of network objects: short, prefixed, deterministic, unique."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.errors import InvalidSpec
from corral.host.network import names

KINDS = list(names.PREFIXES)
ids = st.one_of(st.text(min_size=1, max_size=40), st.integers(min_value=0, max_value=99))
short_ids = st.text(alphabet="ab0-", min_size=1, max_size=5).filter(lambda s: s[0] != "-")


def test_readable_when_the_ids_fit() -> None:
    assert names.make("bridge", "lan") == "crl-br-lan"
    assert names.make("tap", "web", 0) == "crl-tweb.0"
    assert names.make("leg", "gw", "lan") == "crl-vlgw.lan"
    assert names.make("uplink", "gw") == "crl-vugw"
    assert names.make("network", "lan") == "corral-nlan"
    assert names.make("router", "gw") == "corral-rgw"


def test_hashed_when_they_do_not_and_exactly_full_length() -> None:
    long = names.make("bridge", "a-network-with-a-long-name")
    assert long.startswith("crl-br-") and len(long) == names.MAX_LEN
    assert names.make("bridge", "a-network-with-a-long-name") == long  # deterministic
    assert len(names.make("bridge", "Lan")) == names.MAX_LEN  # not lowercase: hashed


def test_no_prefix_is_the_start_of_another() -> None:
    for a, b in itertools.permutations(names.PREFIXES.values(), 2):
        assert not b.startswith(a)
    assert all(names.MAX_LEN - len(p) >= 5 for p in names.PREFIXES.values())


@given(kind=st.sampled_from(KINDS), parts=st.lists(ids, min_size=1, max_size=3))
def test_any_ids_give_a_valid_name_of_their_kind(kind: names.Kind,
                                                 parts: list[str | int]) -> None:
    name = names.make(kind, *parts)
    assert len(name) <= names.MAX_LEN
    assert names.check("name", name) == name
    assert names.kind_of(name) == kind
    assert names.make(kind, *parts) == name


@given(kind=st.sampled_from(KINDS),
       owners=st.lists(st.tuples(st.text(min_size=1, max_size=40), st.integers(0, 99)),
                       min_size=2, max_size=60, unique=True))
def test_names_are_unique_given_what_is_taken(kind: names.Kind,
                                              owners: list[tuple[str, int]]) -> None:
    taken: set[str] = set()
    for owner in owners:
        taken.add(names.make(kind, *owner, taken=taken))
    assert len(taken) == len(owners)


@given(a=st.tuples(short_ids, short_ids), b=st.tuples(short_ids, short_ids))
def test_distinct_ids_never_share_a_name_even_untracked(a: tuple[str, str],
                                                        b: tuple[str, str]) -> None:
    if a != b:
        assert names.make("leg", *a) != names.make("leg", *b)


def test_a_clash_with_a_taken_name_is_drawn_again() -> None:
    first = names.make("tap", "a-vm-with-a-long-name", 3)
    again = names.make("tap", "a-vm-with-a-long-name", 3, taken={first})
    assert again != first and len(again) == names.MAX_LEN and again.startswith("crl-t")


def test_check_refuses_what_linux_would() -> None:
    with pytest.raises(InvalidSpec, match="at most 15") as err:
        names.check("bridge", "crl-br-0123456789")
    assert err.value.field == "bridge"
    with pytest.raises(InvalidSpec, match="only letters"):
        names.check("tap", "crl-t/x")
    assert names.kind_of("crl-vcstandin") is None and names.kind_of("eth0") is None
