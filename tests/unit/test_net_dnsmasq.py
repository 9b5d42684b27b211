"""What each network's dnsmasq is told (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.host.network.dnsmasq import Dnsmasq, hosts_text, names_text
from corral.host.network.ipam import Port, plan_network

WEB0 = Port("lan", "web", "crl-tweb.0", "52:54:00:00:00:01", "10.20.0.10", "web")
WEB1 = Port("lan", "web", "crl-tweb.1", "52:54:00:00:00:02", "10.20.0.11", None)


def test_command_line() -> None:
    server = Dnsmasq.of(plan_network("lan", "10.20.0.0/24", existing={}), Path("/run/x"))
    argv = server.argv()
    assert argv[:5] == ["ip", "netns", "exec", "corral-nlan", "dnsmasq"]
    for option in ("--conf-file=/dev/null", "--no-ping", "--bind-interfaces",
                   "--interface=crl-vdlan", "--pid-file=/run/x/dnsmasq.pid",
                   "--dhcp-hostsfile=/run/x/hosts", "--addn-hosts=/run/x/names",
                   "--dhcp-range=10.20.0.0,static,255.255.255.0,1h",
                   "--dhcp-option=option:router,10.20.0.1", "--local=/corral/"):
        assert option in argv
    assert "--keep-in-foreground" not in argv  # it daemonizes, reporting start-up errors


def test_reservations_and_names() -> None:
    assert hosts_text([WEB1, WEB0]) == ("52:54:00:00:00:01,10.20.0.10,web\n"
                                        "52:54:00:00:00:02,10.20.0.11\n")
    assert names_text([WEB0, WEB1]) == "10.20.0.10 web.corral web\n"
    assert hosts_text([]) == names_text([]) == ""


def test_leases_no_nic_holds_are_released(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A lease of a NIC that went, or of a NIC now given another address, is released
    (dnsmasq would give that address to no other MAC until it expired); the NICs' own
    stay."""
    from corral.host.network import dnsmasq

    server = Dnsmasq.of(plan_network("lan", "10.20.0.0/24", existing={}), tmp_path)
    (tmp_path / "leases").write_text(
        "1796307820 52:54:00:00:00:01 10.20.0.10 web 01:52:54:00:00:00:01\n"
        "1796307820 52:54:00:00:00:09 10.20.0.12 gone *\n"
        "1796307820 52:54:00:00:00:02 10.20.0.13 web *\n")
    ran: list[list[str]] = []
    monkeypatch.setattr(dnsmasq, "run", lambda argv, **_kw: ran.append(list(argv)))
    assert dnsmasq.release_stale(server, [WEB0, WEB1]) == ["10.20.0.12", "10.20.0.13"]
    assert ran == [
        ["ip", "netns", "exec", "corral-nlan", "dhcp_release", "crl-vdlan", "10.20.0.12",
         "52:54:00:00:00:09"],
        ["ip", "netns", "exec", "corral-nlan", "dhcp_release", "crl-vdlan", "10.20.0.13",
         "52:54:00:00:00:02"]]
