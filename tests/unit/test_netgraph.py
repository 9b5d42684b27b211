"""The topology as a text tree and as a Graphviz graph (pure)."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest

from corral.service.netgraph import render

TOPO: dict[str, Any] = {
    "networks": [
        {"name": "lan", "subnet": "10.20.0.0/24", "gateway": "10.20.0.1", "dhcp": True,
         "isolated": False, "router": "gw",
         "ports": [{"vm": "web", "nic": "nic0", "ip": "10.20.0.10", "state": "running"},
                   {"vm": "db", "nic": "nic0", "ip": "10.20.0.11", "state": "stopped"}]},
        {"name": "iso", "subnet": "10.40.0.0/24", "gateway": "10.40.0.1", "dhcp": False,
         "isolated": True, "router": None, "ports": []},
    ],
    "routers": [{"name": "gw", "uplink": True, "host_address": "10.255.0.1",
                 "router_address": "10.255.0.2",
                 "forwards": [{"proto": "tcp", "host_port": 8080, "vm": "web", "port": 80}]}],
    "user": [{"vm": "x", "nic": "nic0", "hostfwd": ["tcp::8022-:22"], "state": "running"}],
}


def test_text_tree() -> None:
    assert render(TOPO).splitlines() == [
        "host",
        "└── router gw  uplink: host 10.255.0.1, router 10.255.0.2",
        "    ├── forward tcp/8080 -> web:80",
        "    └── network lan  10.20.0.0/24  gateway 10.20.0.1  dhcp",
        "        ├── vm web  nic0  10.20.0.10  running",
        "        └── vm db  nic0  10.20.0.11  stopped",
        "network iso  10.40.0.0/24  isolated  no dhcp",
        "user-mode networking",
        "└── vm x  nic0  tcp::8022-:22  running",
    ]


def test_nothing_yet() -> None:
    assert render({"networks": [], "routers": [], "user": []}) == \
        "no networks, routers or NICs yet"


def test_dot_graph() -> None:
    dot = render(TOPO, "dot")
    assert dot.startswith("graph corral {\n") and dot.endswith("}\n")
    for line in ('"host" -- "router:gw" [label="10.255.0.1 / 10.255.0.2"];',
                 '"router:gw" -- "network:lan" [label="10.20.0.1"];',
                 '"network:lan" -- "vm:web" [label="nic0 10.20.0.10"];',
                 '"network:iso" [shape=box, style="rounded,dashed", '
                 'label="iso\\n10.40.0.0/24"];',
                 '"user" -- "vm:x" [label="nic0 tcp::8022-:22"];',
                 '"vm:db" [shape=ellipse, label="db\\nstopped"];'):
        assert f"  {line}\n" in dot, line


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_graphviz_reads_it() -> None:
    svg = subprocess.run(["dot", "-Tsvg"], input=render(TOPO, "dot"), capture_output=True,
                         text=True, check=True).stdout
    assert "<svg" in svg and "router:gw" in svg
