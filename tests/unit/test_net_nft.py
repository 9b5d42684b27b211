"""nftables JSON built for networks and routers (pure), and checked by nft itself when it can
be (root: ``nft --check`` in a throwaway namespace, so no ruleset is ever touched)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from corral.errors import InvalidSpec
from corral.host.network import OPEN, Firewall, Forward, parse_rule
from corral.host.network.ipam import Port, plan_network
from corral.host.network.nft import host_table, network_tables, router_table

PLAN = plan_network("lan", "10.20.0.0/24", existing={})
WEB = Port("lan", "web", "crl-tweb.0", "52:54:00:00:00:01", "10.20.0.10", "web")
DB = Port("lan", "db", "crl-tdb.0", "52:54:00:00:00:02", "10.20.0.11", "db")
FORWARDS = [Forward("gw", "tcp", 8080, "10.20.0.10", 80),
            Forward("gw", "udp", 5353, "10.20.0.11", 53)]
can_check = os.geteuid() == 0 and shutil.which("nft") and shutil.which("unshare")


def rules(cmds: list[dict[str, Any]], family: str, chain: str) -> list[list[dict[str, Any]]]:
    return [c["add"]["rule"]["expr"] for c in cmds if "rule" in c.get("add", {})
            and c["add"]["rule"]["family"] == family and c["add"]["rule"]["chain"] == chain]


def chains(cmds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["add"]["chain"]["name"]: c["add"]["chain"] for c in cmds
            if "chain" in c.get("add", {})}


def nft_check(cmds: list[dict[str, Any]]) -> None:
    if not can_check:
        pytest.skip("nft --check needs root and unshare")
    res = subprocess.run(["unshare", "--net", "nft", "--check", "-j", "-f", "-"],
                         input=json.dumps({"nftables": cmds}), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize(("allow", "source", "expected"), [
    ("tcp/22", "10.20.0.0/24", ("tcp", 22, "10.20.0.0/24")),
    ("UDP/53", "10.20.0.7", ("udp", 53, "10.20.0.7/32")),
    ("icmp", "0.0.0.0/0", ("icmp", None, "0.0.0.0/0")),
    ("tcp", "10.20.0.0/16", ("tcp", None, "10.20.0.0/16")),
])
def test_allow_rules_parse(allow: str, source: str, expected: tuple[object, ...]) -> None:
    rule = parse_rule(allow, source, vm="web")
    assert (rule.proto, rule.port, rule.source) == expected and rule.vm == "web"


@pytest.mark.parametrize(("allow", "source", "field"), [
    ("sctp/1", "0.0.0.0/0", "allow"), ("tcp/0", "0.0.0.0/0", "allow"),
    ("tcp/http", "0.0.0.0/0", "allow"), ("icmp/3", "0.0.0.0/0", "allow"),
    ("tcp/22", "10.20.0.0/33", "from"),
])
def test_bad_allow_rules_are_refused(allow: str, source: str, field: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        parse_rule(allow, source)
    assert err.value.field == field


def test_tables_are_replaced_whole_in_one_batch() -> None:
    cmds = network_tables(PLAN, [WEB], OPEN)
    heads = [next(iter(c)) for c in cmds if "table" in next(iter(c.values()))]
    assert heads == ["add", "delete", "add"] * 2
    assert {c["add"]["table"]["family"] for c in cmds if "table" in c.get("add", {})} == {
        "bridge", "inet"}
    assert "fwd" not in chains(cmds)


def test_each_port_may_send_only_from_its_own_mac_and_address() -> None:
    cmds = network_tables(PLAN, [WEB, DB], OPEN)
    assert chains(cmds)["antispoof"]["hook"] == "forward"
    assert chains(cmds)["antispoof"]["prio"] == -200
    jumps = rules(cmds, "bridge", "antispoof")
    assert [j[0]["match"]["right"] for j in jumps] == ["crl-tweb.0", "crl-tdb.0"]
    guard = rules(cmds, "bridge", "port-crl-tweb.0")
    text = json.dumps(guard)
    assert '"right": "52:54:00:00:00:01"' in text and '"right": "10.20.0.10"' in text
    assert guard[-1] == [{"match": {"op": "!=", "left": {"payload": {
        "protocol": "ether", "field": "type"}}, "right": {"set": ["ip", "arp"]}}},
        {"drop": None}]
    assert "10.20.0.11" not in text


def test_the_firewall_filters_what_goes_to_vms() -> None:
    firewall = Firewall("drop", (parse_rule("tcp/22", "10.20.0.0/24", vm="db"),
                                 parse_rule("icmp"), parse_rule("udp/53", vm="nobody")))
    cmds = network_tables(PLAN, [WEB, DB], firewall)
    [guard] = rules(cmds, "inet", "guard")
    assert guard[0]["match"]["right"] == "crl-br-lan"
    assert guard[1]["match"]["right"] == {"set": ["10.20.0.1", "10.20.0.2"]}
    inbound = rules(cmds, "inet", "inbound")
    assert inbound[0][0]["match"]["right"] == ["established", "related"]
    assert inbound[2] == [
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                   "right": {"set": ["10.20.0.11"]}}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                   "right": {"prefix": {"addr": "10.20.0.0", "len": 24}}}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                   "right": 22}},
        {"accept": None}]
    assert inbound[3] == [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}},
                                     "right": "icmp"}}, {"accept": None}]
    assert inbound[-1] == [{"drop": None}]  # the rule for a VM with no NIC here is left out
    assert len(inbound) == 5
    assert rules(network_tables(PLAN, [WEB], OPEN), "inet", "inbound")[-1] == [
        {"accept": None}]


def test_router_and_host_nat() -> None:
    inside = router_table("corral-rgw", "crl-vugw", FORWARDS)
    assert rules(inside, "ip", "postrouting") == [[
        {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "crl-vugw"}},
        {"masquerade": None}]]
    dnats = rules(inside, "ip", "prerouting")
    assert [d[-1] for d in dnats] == [{"dnat": {"addr": "10.20.0.10", "port": 80}},
                                      {"dnat": {"addr": "10.20.0.11", "port": 53}}]
    host = host_table("corral-rgw", "crl-vugw", IPv4Network("10.255.0.0/30"),
                      IPv4Address("10.255.0.2"), FORWARDS)
    for chain in ("prerouting", "output"):
        assert [r[-1] for r in rules(host, "ip", chain)] == [
            {"dnat": {"addr": "10.255.0.2", "port": 8080}},
            {"dnat": {"addr": "10.255.0.2", "port": 5353}}]
    assert chains(host)["output"]["type"] == "nat"
    [isolate] = rules(host, "ip", "isolate")
    assert isolate[1]["match"]["right"] == "crl-vu*" and isolate[-1] == {"drop": None}


def test_nft_accepts_every_batch() -> None:
    firewall = Firewall("drop", (parse_rule("tcp/22", "10.20.0.0/24", vm="db"),
                                 parse_rule("icmp"), parse_rule("udp")))
    nft_check([*network_tables(PLAN, [WEB, DB], firewall),
               *router_table("corral-rgw", "crl-vugw", FORWARDS),
               *host_table("corral-rgw2", "crl-vugw", IPv4Network("10.255.0.0/30"),
                           IPv4Address("10.255.0.2"), FORWARDS)])
