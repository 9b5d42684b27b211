"""NIC requests: user-mode forwards, network ports, the CLI's --nic and the NIC lines of
'corral show' (pure)."""

from __future__ import annotations

import pytest

from corral.cli import render
from corral.domain.nics import HostFwd, check_nic, parse_hostfwd
from corral.domain.specs import HostFacts, parse_create, validate_against_host
from corral.errors import InvalidSpec

HOST = HostFacts(cpus=4, memory_bytes=8 << 30)


@pytest.mark.parametrize(("text", "qemu"), [
    ("tcp:8022-:22", "tcp:127.0.0.1:8022-:22"),  # the host's loopback unless one is given
    ("tcp::8022-:22", "tcp:127.0.0.1:8022-:22"),
    ("TCP:127.0.0.1:8080-:80", "tcp:127.0.0.1:8080-:80"),
    ("tcp:0.0.0.0:8080-:80", "tcp:0.0.0.0:8080-:80"),  # every address, only when asked
    ("udp::5353-10.0.2.15:53", "udp:127.0.0.1:5353-10.0.2.15:53"),
])
def test_hostfwd_forms_become_what_qemu_parses(text: str, qemu: str) -> None:
    assert parse_hostfwd("hostfwd", text).qemu() == qemu


def test_hostfwd_fields() -> None:
    assert parse_hostfwd("f", "tcp:127.0.0.1:8080-:80") == HostFwd("tcp", "127.0.0.1", 8080,
                                                                     "", 80)


@pytest.mark.parametrize(("text", "why"), [
    ("8022-:22", "not a port forward"), ("sctp:1-:2", "not a port forward"),
    ("tcp:0-:22", "not a port number"), ("tcp:8022-:70000", "not a port number"),
    ("tcp:1.2.3:8022-:22", "not an IPv4 address"), ("tcp:8022:22", "not a port forward"),
])
def test_bad_hostfwd_is_refused_naming_the_field(text: str, why: str) -> None:
    with pytest.raises(InvalidSpec, match=why) as err:
        parse_hostfwd("nics.0.hostfwd.0", text)
    assert err.value.field == "nics.0.hostfwd.0"


def test_the_mode_follows_the_fields() -> None:
    assert check_nic("n", None, None, None, []) == "user"
    assert check_nic("n", None, "lan", "10.20.0.5", []) == "network"
    assert check_nic("n", "user", None, None, ["tcp:8022-:22"]) == "user"


@pytest.mark.parametrize(("nic", "field"), [
    ({"mode": "user", "network": "lan"}, "nics.0.network"),
    ({"mode": "user", "ip": "10.0.0.5"}, "nics.0.ip"),
    ({"mode": "network"}, "nics.0.network"),
    ({"network": "lan", "hostfwd": ["tcp:8022-:22"]}, "nics.0.hostfwd"),
    ({"network": "lan", "ip": "10.0.0"}, "nics.0.ip"),
    ({"hostfwd": ["tcp:8022-22"]}, "nics.0.hostfwd.0"),
])
def test_create_refuses_nics_whose_fields_disagree(nic: dict[str, object], field: str) -> None:
    req = parse_create({"name": "web", "nics": [nic]})
    with pytest.raises(InvalidSpec) as err:
        validate_against_host(req, HOST)
    assert err.value.field == field


def test_cli_nic_option() -> None:
    assert render.parse_nic("lan") == {"network": "lan"}
    assert render.parse_nic("lan,ip=10.20.0.5,mac=52:54:00:00:00:09") == {
        "network": "lan", "ip": "10.20.0.5", "mac": "52:54:00:00:00:09"}
    assert render.parse_nic("user,hostfwd=tcp:8022-:22,hostfwd=tcp:8080-:80") == {
        "mode": "user", "hostfwd": ["tcp:8022-:22", "tcp:8080-:80"]}
    assert render.parse_nic("mode=user") == {"mode": "user"}
    for bad in ("lan,vlan=3", "lan,ip"):
        with pytest.raises(InvalidSpec):
            render.parse_nic(bad)


def test_nic_lines_of_show() -> None:
    network = {"id": None, "mode": "network", "network": "lan", "ip": "10.20.0.10",
               "lease": "10.20.0.10", "mac": "52:54:00:00:00:01", "guest_interface": "eth0",
               "guest_addresses": ["10.20.0.10/24"],
               "counters": {"rx_bytes": 2048, "tx_bytes": 10, "rx_packets": 3,
                            "tx_packets": 1}}
    assert render.nic(network, 0) == ("nic0  network lan  ip 10.20.0.10  lease 10.20.0.10  "
                                      "mac 52:54:00:00:00:01  eth0 10.20.0.10/24  "
                                      "rx 2.0KB/3p tx 10B/1p")
    user = {"id": "nic1", "mode": "user", "hostfwd": ["tcp::8022-:22"],
            "mac": "52:54:00:00:00:02"}
    assert render.nic(user, 1) == "nic1  user-mode  tcp::8022-:22  mac 52:54:00:00:00:02"
    assert [render.human_bytes(n) for n in (0, 1023, 1536, 5 << 20, 3 << 40)] == [
        "0", "1023", "1.5K", "5.0M", "3.0T"]
