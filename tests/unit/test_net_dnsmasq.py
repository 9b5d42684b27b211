"""What each network's dnsmasq is told (pure)."""

from __future__ import annotations

from pathlib import Path

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
