"""The network commands of the CLI: what they parse into, what they print, and the one-line
errors they give (the daemon is a stub here)."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from corral.cli import common, main, networks
from corral.errors import CorralError


class Stub:
    """Stands in for corral.Client: returns canned answers and records the calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args + tuple(kwargs.values())))
            return ANSWERS.get(name)
        return call


ANSWERS: dict[str, Any] = {
    "forward_add": {"proto": "tcp", "host_port": 8080, "ip": "10.20.0.10"},
    "forward_list": [{"router": "gw", "proto": "tcp", "host_port": 8080, "vm": "web",
                      "ip": "10.20.0.10", "port": 80}],
    "topology": "graph corral {\n}\n",
    "firewall_add": {"id": 3, "allow": "tcp/22", "from": "0.0.0.0/0", "vm": "web",
                     "network": None},
    "network_create": {"name": "lan", "subnet": "10.20.0.0/24", "bridge": "crl-br-lan"},
    "network_list": [{"name": "lan", "subnet": "10.20.0.0/24", "dhcp": True, "router": None,
                      "isolated": True, "policy": "drop", "ports": [{}]}],
}


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Stub:
    s = Stub()
    monkeypatch.setattr(common, "client", lambda _args: s)
    return s


def test_commands_reach_the_client(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    assert main.main(["router", "forward", "gw", "tcp", "8080", "web:80"]) == 0
    assert stub.calls[-1] == ("forward_add", ("gw", "tcp", 8080, "web", 80))
    assert "host port tcp/8080 -> web:80 (10.20.0.10)" in capsys.readouterr().out
    assert main.main(["router", "forwards", "gw"]) == 0
    assert "gw      tcp/8080   web:80  10.20.0.10:80" in capsys.readouterr().out
    assert main.main(["network", "list"]) == 0
    assert "lan   10.20.0.0/24  yes   isolated  drop    1" in capsys.readouterr().out
    assert main.main(["firewall", "add", "web", "--allow", "tcp/22"]) == 0
    assert stub.calls[-1] == ("firewall_add", ("web", "tcp/22", "0.0.0.0/0"))
    assert "rule #3: allow tcp/22 from 0.0.0.0/0 to VM web" in capsys.readouterr().out
    assert main.main(["network", "create", "lan", "--subnet", "10.20.0.0/24", "--no-dhcp"]) == 0
    assert stub.calls[-1] == ("network_create", ("lan", "10.20.0.0/24", False, False))


def test_bad_forward_target_is_one_line(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    assert main.main(["router", "forward", "gw", "tcp", "8080", "web"]) == 2
    assert capsys.readouterr().err == ("corral: error: target: 'web' is not VM:PORT, "
                                       "e.g. web:80\n")


def test_svg_without_graphviz_says_what_to_install(stub: Stub,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(CorralError, match="apt-get install graphviz"):
        networks.graph(stub, "svg", None)


ANSWERS["network_rm"] = ["leg of router gw", "NIC web/nic1"]
ANSWERS["router_rm"] = []


def test_forced_rm_says_what_it_removed(stub: Stub, capsys: pytest.CaptureFixture[str]) -> None:
    assert main.main(["network", "rm", "lan", "--force"]) == 0
    assert stub.calls[-1] == ("network_rm", ("lan", True))
    assert capsys.readouterr().out == ("network lan removed (and leg of router gw, "
                                       "NIC web/nic1)\n")
    assert main.main(["router", "rm", "gw"]) == 0
    assert stub.calls[-1] == ("router_rm", ("gw", False))
    assert capsys.readouterr().out == "router gw removed\n"


def test_a_network_that_spans_hosts_shows_its_overlay() -> None:
    lan = {"name": "lan", "subnet": "10.20.0.0/24", "dhcp": True, "router": None,
           "isolated": False, "policy": "accept", "vni": 4096, "home": "h1", "mtu": 1450,
           "hosts": ["h1", "h2"], "bridge": "crl-br-lan", "gateway": "10.20.0.1",
           "dhcp_server": "10.20.0.2", "pool": "10.20.0.10-10.20.0.254", "rules": [],
           "ports": [{"vm": "b", "nic": None, "ip": "10.20.0.10", "mac": "52:54:00:00:00:01",
                      "tap": "crl-tb.0", "host": "h2"}]}
    listed = networks.network_table([lan]).splitlines()
    assert listed[0].endswith("OVERLAY") and listed[1].endswith("vxlan 4096, home h1, on h1,h2")
    shown = networks.network_detail(lan)
    assert "overlay vxlan 4096, home h1, on h1,h2, guest MTU 1450" in shown
    assert shown.splitlines()[-1].split()[-1] == "h2"  # the HOST of b's NIC
    one_host = {k: v for k, v in lan.items() if k not in ("vni", "home", "mtu", "hosts")}
    assert "OVERLAY" not in networks.network_table([one_host])
