"""Plans of networks, NICs and routers: addresses, MACs and refusals (pure)."""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.errors import InvalidSpec
from corral.host.network import Leg, NetworkPlan, Record, plan_forward, plan_leg, plan_router
from corral.host.network.ipam import (
    QEMU_DEFAULT_MAC,
    assign_ip,
    assign_mac,
    assign_transfer,
    plan_network,
    plan_port,
)


def lan(subnet: str = "10.20.0.0/24") -> NetworkPlan:
    return plan_network("lan", subnet, existing={})


def test_a_network_plan() -> None:
    plan = lan()
    assert (plan.gateway, plan.dhcp_server) == ("10.20.0.1", "10.20.0.2")
    assert (plan.pool_start, plan.pool_end) == ("10.20.0.10", "10.20.0.254")
    assert (plan.bridge, plan.netns, plan.veth) == ("crl-br-lan", "corral-nlan", "crl-vdlan")
    assert NetworkPlan(**dataclasses.asdict(plan)) == plan  # stored and read back
    small = lan("10.20.0.0/28")
    assert (small.pool_start, small.pool_end) == ("10.20.0.3", "10.20.0.14")


@pytest.mark.parametrize(("subnet", "message"), [
    ("10.20.0.0/30", "too small"),
    ("10.20.0.5/24", "host bits set"),
    ("fd00::/64", "not an IPv4 network"),
    ("lan", "not an IPv4 network"),
    ("10.20.128.0/17", "overlaps network dmz"),
    ("10.255.3.0/24", "overlaps the uplink transfer pool"),
    ("127.0.0.0/24", "in loopback space"),
    ("224.1.0.0/16", "in multicast space"),
    ("240.0.0.0/24", "in reserved space"),
    ("0.0.0.0/0", "in 'this network' space"),
])
def test_bad_subnets_are_refused(subnet: str, message: str) -> None:
    with pytest.raises(InvalidSpec, match=message) as err:
        plan_network("x", subnet, existing={"network dmz": IPv4Network("10.20.0.0/16")})
    assert err.value.field == "subnet"


def test_addresses_come_from_the_pool_lowest_first() -> None:
    plan = lan()
    assert assign_ip(plan, []) == "10.20.0.10"
    assert assign_ip(plan, ["10.20.0.10", "10.20.0.11"]) == "10.20.0.12"
    assert assign_ip(plan, ["10.20.0.10"], "10.20.0.3") == "10.20.0.3"
    tiny = lan("10.20.0.0/29")
    with pytest.raises(InvalidSpec, match="no free address"):
        assign_ip(tiny, ["10.20.0.3", "10.20.0.4", "10.20.0.5", "10.20.0.6"])


@pytest.mark.parametrize(("ip", "message"), [
    ("10.21.0.5", "not a host address"),
    ("10.20.0.0", "not a host address"),
    ("10.20.0.255", "not a host address"),
    ("10.20.0.1", "reserved for the network's gateway"),
    ("10.20.0.2", "reserved for the network's DHCP server"),
    ("10.20.0.10", "already taken"),
    ("ten", "not an IPv4 address"),
])
def test_bad_fixed_addresses_are_refused(ip: str, message: str) -> None:
    with pytest.raises(InvalidSpec, match=message) as err:
        assign_ip(lan(), ["10.20.0.10"], ip)
    assert err.value.field == "ip"


def test_macs() -> None:
    mac = assign_mac("web/0", [])
    assert mac.startswith("52:54:00:") and mac == assign_mac("web/0", [])
    assert assign_mac("web/0", [mac]) != mac
    assert assign_mac("web/0", [], "52:54:00:AB:CD:EF") == "52:54:00:ab:cd:ef"
    for bad, message in (("52:54:00:ab:cd", "not a MAC"), ("01:00:5e:00:00:01", "multicast"),
                         (mac.upper(), "already in use"), (QEMU_DEFAULT_MAC, "already in use")):
        with pytest.raises(InvalidSpec, match=message) as err:
            assign_mac("web/1", [mac], bad)
        assert err.value.field == "mac"


@given(st.lists(st.text(max_size=10), min_size=1, max_size=300, unique=True))
def test_macs_are_unique_across_what_is_recorded(keys: list[str]) -> None:
    macs: list[str] = []
    for key in keys:
        macs.append(assign_mac(key, macs))
    assert len(set(macs)) == len(macs) and QEMU_DEFAULT_MAC not in macs


def test_ports_get_a_tap_a_mac_an_address_and_a_dns_name_once() -> None:
    plan = lan()
    web0 = plan_port(plan, "web", 0, ports=[], taken=set(), macs=set())
    assert (web0.ifname, web0.ip, web0.hostname) == ("crl-tweb.0", "10.20.0.10", "web")
    web1 = plan_port(plan, "web", 1, ports=[web0], taken={web0.ifname}, macs={web0.mac})
    assert (web1.ip, web1.hostname) == ("10.20.0.11", None) and web1.mac != web0.mac
    with pytest.raises(InvalidSpec, match="already taken"):
        plan_port(plan, "db", 0, ports=[web0], taken=set(), macs=set(), ip=web0.ip)


def test_transfer_subnets() -> None:
    assert str(assign_transfer([])) == "10.255.0.0/30"
    assert str(assign_transfer(["10.255.0.0/30", "10.255.0.8/30"])) == "10.255.0.4/30"
    with pytest.raises(InvalidSpec, match="no free transfer subnet") as err:
        assign_transfer(["10.255.0.0/30"], pool=IPv4Network("10.255.0.0/30"))
    assert err.value.field == "uplink"


def test_router_plans() -> None:
    gw = plan_router("gw", uplink=True, taken=(), transfers=["10.255.0.0/30"])
    assert (gw.netns, gw.uplink, gw.transfer) == ("corral-rgw", "crl-vugw", "10.255.0.4/30")
    assert (str(gw.host_ip), str(gw.router_ip)) == ("10.255.0.5/30", "10.255.0.6/30")
    inner = plan_router("in", uplink=False, taken=())
    assert inner.uplink is None
    with pytest.raises(InvalidSpec, match="no uplink"):
        _ = inner.router_ip
    net = lan()
    leg = plan_leg(gw, net, legs=[], taken=())
    assert (leg.veth, leg.address) == ("crl-vlgw.lan", "10.20.0.1/24")
    with pytest.raises(InvalidSpec, match="already attached to router 'other'") as err:
        plan_leg(gw, net, legs=[Leg("other", "lan", "crl-vlother.lan", "10.20.0.1/24")],
                 taken=())
    assert err.value.field == "network"


def test_port_forward_plans() -> None:
    gw = plan_router("gw", uplink=True, taken=())
    fwd = plan_forward(gw, "tcp", 8080, "10.20.0.10", 80, forwards=[],
                       subnets=["10.20.0.0/24"])
    assert (fwd.router, fwd.host_port, fwd.ip, fwd.port) == ("gw", 8080, "10.20.0.10", 80)
    cases = [
        (gw, "sctp", 8080, "10.20.0.10", 80, "proto"),
        (gw, "tcp", 0, "10.20.0.10", 80, "host_port"),
        (gw, "tcp", 8081, "10.20.0.10", 70000, "port"),
        (gw, "tcp", 8080, "10.20.0.11", 22, "host_port"),  # forwarded already
        (gw, "tcp", 8081, "10.30.0.10", 80, "ip"),
        (plan_router("in", uplink=False, taken=()), "tcp", 8081, "10.20.0.10", 80, "router"),
    ]
    for router, proto, host_port, ip, port, field in cases:
        with pytest.raises(InvalidSpec) as err:
            plan_forward(router, proto, host_port, ip, port, forwards=[fwd],
                         subnets=["10.20.0.0/24"])
        assert err.value.field == field
    assert plan_forward(gw, "udp", 8080, "10.20.0.10", 53, forwards=[fwd],
                        subnets=["10.20.0.0/24"]).proto == "udp"


def test_records_round_trip() -> None:
    record = Record("nft_table", "corral-nlan", "network:lan", None, "inet")
    assert Record.from_dict(record.to_dict()) == record
    with pytest.raises(InvalidSpec, match="unknown network record kind 'vlan'"):
        Record.from_dict({**record.to_dict(), "kind": "vlan"})
