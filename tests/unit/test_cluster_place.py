"""Placement across a cluster's host rows (corral.service.clusterplace): only up hosts take
VMs, assignments in flight count on their host, every host gets a reason."""

from __future__ import annotations

from typing import Any

import pytest

from corral.errors import InvalidSpec, NotFound
from corral.service import clusterplace

GiB = 1 << 30


def row(name: str, state: str = "up", memory: int = 4 * GiB, used: int = 0,
        **labels: str) -> dict[str, Any]:
    return {"name": name, "state": state, "cpus": 4, "memory": memory, "disk": 100 * GiB,
            "arch": "x86_64", "accel": "tcg", "labels": labels, "ratios": [1.0, 1.0, 1.0],
            "used": {"cpus": 0, "memory": used, "disk": 0, "groups": {}}}


def test_only_up_hosts_take_new_vms_and_each_host_has_a_reason() -> None:
    rows = [row("a", "cordoned"), row("b", "down"), row("c", used=3 * GiB), row("d")]
    _, req = clusterplace.request_of({"name": "web", "memory": "512M"})
    choice = clusterplace.choose(rows, [], req, "spread")
    assert choice["host"] == "d"
    assert choice["hosts"] == {"a": "host is cordoned", "b": "host is down",
                               "c": "fits, but spread prefers another (1024 MiB free)",
                               "d": "chosen"}
    assert clusterplace.choose(rows, [], req, "pack")["host"] == "c"


def test_in_flight_assignments_count_on_their_host() -> None:
    rows = [row("a"), row("b", memory=3 * GiB)]
    _, req = clusterplace.request_of({"name": "x", "memory": "2G"})
    flight = [{"id": 1, "host": "a", "request": clusterplace.to_dict(req)}]
    assert clusterplace.choose(rows, flight, req, "spread")["host"] == "b"


def test_labels_host_and_groups() -> None:
    rows = [row("a", zone="1"), row("b", zone="2")]
    _, req = clusterplace.request_of({"name": "x", "on": {"zone": "2"}})
    assert clusterplace.choose(rows, [], req, "spread")["host"] == "b"
    _, req = clusterplace.request_of({"name": "x", "on": {"arch": "aarch64"}})
    choice = clusterplace.choose(rows, [], req, "spread")
    assert choice["host"] is None and "arch=x86_64" in choice["hosts"]["a"]
    _, req = clusterplace.request_of({"name": "x", "host": "a"})
    assert clusterplace.choose(rows, [], req, "pack")["host"] == "a"
    _, req = clusterplace.request_of({"name": "x", "host": "zz"})
    with pytest.raises(NotFound):
        clusterplace.choose(rows, [], req, "spread")
    rows[0]["used"]["groups"] = {"g": 1}
    _, req = clusterplace.request_of({"name": "x", "group": "g", "anti_affinity": True})
    assert clusterplace.choose(rows, [], req, "pack")["host"] == "b"
    with pytest.raises(InvalidSpec):
        clusterplace.request_of({"name": "x", "anti_affinity": True})
