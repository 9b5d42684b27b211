"""Spec parsing and validation: every bad value is refused with the field and the fix."""

from __future__ import annotations

import pytest

from corral.domain.sizes import format_size, parse_size
from corral.domain.specs import HostFacts, new_mac, parse_create, validate_against_host
from corral.errors import InvalidSpec

HOST = HostFacts(cpus=2, memory_bytes=4 << 30)


def refused(body: dict[str, object]) -> InvalidSpec:
    with pytest.raises(InvalidSpec) as info:
        validate_against_host(parse_create(body), HOST)
    assert "\n" not in info.value.message
    return info.value


@pytest.mark.parametrize(("text", "expected"), [
    ("256M", 256 << 20), ("2G", 2 << 30), ("1.5G", 3 << 29), ("512", 512 << 20),
    ("64MiB", 64 << 20), ("1024k", 1 << 20), (" 1 g ", 1 << 30), (128, 128 << 20),
])
def test_sizes(text: str | int, expected: int) -> None:
    assert parse_size("memory", text) == expected


@pytest.mark.parametrize("text", ["12X", "", "M", "-1G", "0", "1.2.3G", "ten"])
def test_bad_sizes_name_the_field(text: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        parse_size("memory", text)
    assert info.value.field == "memory"


def test_format_size() -> None:
    assert format_size(256 << 20) == "256M"
    assert format_size(2 << 30) == "2G"


def test_memory_12x() -> None:
    err = refused({"name": "a", "memory": "12X"})
    assert err.field == "memory" and "256M" in err.message


def test_zero_cpus() -> None:
    err = refused({"name": "a", "cpus": 0})
    assert err.field == "cpus" and "at least 1" in err.message


def test_more_memory_than_host() -> None:
    err = refused({"name": "a", "memory": "64G"})
    assert err.field == "memory" and "4096 MiB" in err.message


def test_too_little_memory() -> None:
    assert refused({"name": "a", "memory": "16M"}).field == "memory"


@pytest.mark.parametrize("name", ["", "Web", "-x", "a_b", "a" * 33, "a b", "../x", "é"])
def test_bad_names(name: str) -> None:
    err = refused({"name": name})
    assert err.field == "name" and "lowercase" in err.message


def test_unknown_field_refused() -> None:
    assert refused({"name": "a", "memroy": "1G"}).field == "memroy"


def test_initrd_needs_kernel() -> None:
    assert refused({"name": "a", "initrd": "/x"}).field == "kernel"


def test_bad_mac() -> None:
    assert refused({"name": "a", "nics": [{"mac": "zz"}]}).field == "nics.0.mac"


def test_disk_needs_size_or_path() -> None:
    assert refused({"name": "a", "disks": [{}]}).field == "disks.0"
    assert refused({"name": "a", "disks": [{"size": "1G", "path": "/x"}]}).field == "disks.0"
    assert refused({"name": "a", "disks": [{"size": "big"}]}).field == "disks.0.size"


def test_valid_spec_returns_memory() -> None:
    req = parse_create({"name": "web-1", "cpus": 2, "memory": "512M"})
    assert validate_against_host(req, HOST) == 512 << 20


def test_macs_are_qemu_local_and_distinct() -> None:
    macs = {new_mac() for _ in range(200)}
    assert len(macs) > 190
    assert all(m.startswith("52:54:00:") for m in macs)
