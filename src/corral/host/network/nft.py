"""nftables: one atomic JSON batch per change, and the rulesets Corral needs, built as JSON.

:class:`Nft` sends a batch to ``nft -j -f -`` (through the runner; inside a namespace through
``ip netns exec``). The kernel applies a batch whole or not at all, so a table is replaced
atomically by the batch ``add table; delete table; add table; ...`` (the first ``add``
makes the ``delete`` safe when the table is new). Nothing is written as nft text.

Each network has two tables named after its namespace (``corral-nlan``), in the host:

``bridge`` family, chain ``antispoof`` (hook forward, priority -200)
    a frame arriving from a port (a VM's tap) jumps to the port's chain, which drops it
    unless its Ethernet and ARP sender are the port's MAC and its IPv4 source (or ARP sender
    address) is the port's IP; a DHCP request from 0.0.0.0 is let through, DHCP server replies
    from a VM (a rogue server) are dropped, and anything but IPv4 and ARP is dropped (networks
    are IPv4 only).
``inet`` family, chains ``guard`` (hook forward, priority 0) and ``inbound``
    IPv4 leaving the bridge towards anything but the gateway and the DHCP server goes through
    ``inbound``: established and related traffic and the DHCP server's replies pass, then the
    allow rules (``tcp/22 from 10.20.0.0/24``, for the whole network or for one VM's
    addresses), then the network's default policy.

The ``inet`` chains see bridged traffic because the kernel passes it through the IP hooks
(``br_netfilter`` with ``net.bridge.bridge-nf-call-iptables=1``). That is what gives the
firewall connection tracking: the bridge family has none without ``nf_conntrack_bridge``,
which the kernel of the project's machine lacks (as it lacks the bridge ``meta`` matches).
:func:`bridge_filtering` says whether a namespace passes bridged traffic that way.

Each router with an uplink has a table ``ip corral-r<key>`` inside its namespace
(``masquerade`` out of the uplink, ``dnat`` of forwarded ports to the VM) and one of the
same name in the host: forwarded host ports go to the router's transfer address (also for
connections from the host itself, to 127.0.0.1 too: the uplink gets ``route_localnet``),
traffic the router sends past the host is masqueraded (so guests reach beyond the host when
the host forwards), and the host never forwards from one router's uplink to another's.

One trap shapes these rules: the host sees a connection to a VM twice, once routed towards a
router and once bridged from the router's leg to the VM. If the host's NAT changed it in
between, the second sight would clash with the first in the host's connection tracking and be
dropped. So the host's NAT never touches what goes to a router (port forwards go to the
router's own address, and the router rewrites them to the VM), only what leaves elsewhere.
"Elsewhere" excludes the networks' bridges: with ``br_netfilter`` a forwarded connection
from the host (source: the host's transfer address) passes the host's ``postrouting`` again
when the router's leg bridges it to the VM, and masquerading it there would give it the
address of some other host interface, to which the VM's answer could never find its way.

``fwd`` is a keyword in nft: no chain may be named so.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, Literal

from corral.errors import InvalidSpec
from corral.host.network import names
from corral.host.network.ipam import NetworkPlan, Port
from corral.host.network.links import run_in
from corral.host.runner import run

Cmd = dict[str, Any]
Policy = Literal["accept", "drop"]
PROTOS = ("tcp", "udp", "icmp")
UPLINK_WILDCARD = names.PREFIXES["uplink"] + "*"  # matches the uplink of every router
BRIDGE_WILDCARD = names.PREFIXES["bridge"] + "*"  # and the bridge of every network

_ACCEPT: Cmd = {"accept": None}
_DROP: Cmd = {"drop": None}


@dataclass(frozen=True)
class Rule:
    """Allow ``proto`` (to ``port``; any port when None) from ``source`` to every VM of the
    network, or only to ``vm``."""

    proto: str
    port: int | None
    source: str
    vm: str | None = None


@dataclass(frozen=True)
class Firewall:
    policy: Policy = "accept"
    rules: tuple[Rule, ...] = ()


OPEN = Firewall()  # every network's firewall until rules are added: all traffic passes


@dataclass(frozen=True)
class Forward:
    """Host port ``host_port`` (``proto``) published by ``router`` to ``ip``:``port``."""

    router: str
    proto: str
    host_port: int
    ip: str
    port: int


def parse_rule(allow: str, source: str = "0.0.0.0/0", vm: str | None = None) -> Rule:
    """``--allow tcp/22 --from 10.20.0.0/24`` as a :class:`Rule`; ``tcp`` alone allows every
    port, ``icmp`` takes no port.

    :raises InvalidSpec: (field ``allow`` or ``from``) when either is malformed.
    """
    proto, _, port_text = allow.lower().partition("/")
    if proto not in PROTOS:
        raise InvalidSpec("allow", f"'{allow}': protocol must be one of {', '.join(PROTOS)}")
    port: int | None = None
    if port_text:
        if proto == "icmp" or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise InvalidSpec("allow", f"'{allow}': expected tcp/PORT, udp/PORT or icmp")
        port = int(port_text)
    try:
        net = IPv4Network(source, strict=False)
    except ValueError as err:
        raise InvalidSpec("from", f"'{source}' is not an IPv4 network") from err
    return Rule(proto, port, str(net), vm)


class Nft:
    """The nftables ruleset of one network namespace (None: the host's)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def _argv(self, *args: str) -> list[str]:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return [*prefix, "nft", "-j", *args]

    def apply(self, cmds: Sequence[Cmd]) -> None:
        """Apply ``cmds`` as one transaction.

        :raises CommandFailed: when nft refuses the batch; nothing of it is then applied.
        """
        run(self._argv("-f", "-"), input=json.dumps({"nftables": list(cmds)}),
            what="nft refused the batch")

    def tables(self) -> list[tuple[str, str]]:
        """(family, name) of every table."""
        out = run(self._argv("list", "tables"), what="nft cannot list tables").stdout
        items = json.loads(out)["nftables"] if out.strip() else []
        return [(i["table"]["family"], i["table"]["name"]) for i in items if "table" in i]

    def delete_table(self, family: str, name: str) -> None:
        """Delete a table if it exists."""
        self.apply([{"add": {"table": _table(family, name)}},
                    {"delete": {"table": _table(family, name)}}])


def bridge_filtering(netns: str | None = None) -> bool:
    """Whether bridged IPv4 traffic in ``netns`` passes the ``inet`` hooks (needed by the
    per-network firewall)."""
    knob = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
    return run_in(netns, lambda: knob.exists() and knob.read_text().strip() == "1")


# -- rulesets --------------------------------------------------------------------------------

def network_tables(plan: NetworkPlan, ports: Sequence[Port], firewall: Firewall) -> list[Cmd]:
    """The batch that (re)makes both tables of a network: anti-spoofing and firewall."""
    table = plan.netns
    cmds = _replace("bridge", table)
    cmds.append(_chain("bridge", table, "antispoof", hook="forward", prio=-200))
    for port in ports:
        chain = f"port-{port.ifname}"
        cmds.append(_chain("bridge", table, chain))
        cmds.append(_rule("bridge", table, "antispoof",
                          _is(_meta("iifname"), port.ifname), {"jump": {"target": chain}}))
        for expr in _port_guard(port):
            cmds.append(_rule("bridge", table, chain, *expr))
    cmds += _replace("inet", table)
    cmds.append(_chain("inet", table, "guard", hook="forward", prio=0))
    cmds.append(_chain("inet", table, "inbound"))
    cmds.append(_rule("inet", table, "guard", _is(_meta("oifname"), plan.bridge),
                      _is(_ip("daddr"), {"set": [plan.gateway, plan.dhcp_server]}, "!="),
                      {"jump": {"target": "inbound"}}))
    inbound: list[list[Cmd]] = [
        [_is({"ct": {"key": "state"}}, ["established", "related"], "in"), _ACCEPT],
        [_is(_ip("saddr"), plan.dhcp_server), _is(_field("udp", "sport"), 67),
         _is(_field("udp", "dport"), 68), _ACCEPT],
    ]
    for rule in firewall.rules:
        targets = [p.ip for p in ports if rule.vm is None or p.vm == rule.vm]
        if rule.vm is not None and not targets:
            continue  # the VM has no NIC on this network
        inbound.append(_allow(rule, targets if rule.vm is not None else None))
    inbound.append([_ACCEPT if firewall.policy == "accept" else _DROP])
    cmds += [_rule("inet", table, "inbound", *expr) for expr in inbound]
    return cmds


def _port_guard(port: Port) -> list[list[Cmd]]:
    only_ip = {"set": [port.ip, "0.0.0.0"]}
    return [
        [_is(_field("ether", "saddr"), port.mac, "!="), _DROP],
        [_is(_field("arp", "saddr ether"), port.mac, "!="), _DROP],
        [_is(_field("arp", "saddr ip"), only_ip, "!="), _DROP],
        [_is(_field("udp", "sport"), 67), _DROP],  # a VM is no DHCP server
        [_is(_ip("saddr"), "0.0.0.0"), _is(_field("udp", "sport"), 68),
         _is(_field("udp", "dport"), 67), _ACCEPT],
        [_is(_ip("saddr"), port.ip, "!="), _DROP],
        [_is(_field("ether", "type"), {"set": ["ip", "arp"]}, "!="), _DROP],
    ]


def _allow(rule: Rule, targets: list[str] | None) -> list[Cmd]:
    expr: list[Cmd] = []
    if targets is not None:
        expr.append(_is(_ip("daddr"), {"set": targets}))
    if rule.source != "0.0.0.0/0":
        expr.append(_is(_ip("saddr"), _addr(rule.source)))
    if rule.port is None:
        expr.append(_is(_meta("l4proto"), rule.proto))
    else:
        expr.append(_is(_field(rule.proto, "dport"), rule.port))
    return [*expr, _ACCEPT]


def router_table(table: str, uplink: str, forwards: Iterable[Forward]) -> list[Cmd]:
    """The batch that (re)makes the NAT table inside a router's namespace."""
    cmds = _replace("ip", table)
    cmds.append(_chain("ip", table, "prerouting", hook="prerouting", prio=-100, type="nat"))
    cmds.append(_chain("ip", table, "postrouting", hook="postrouting", prio=100, type="nat"))
    cmds.append(_rule("ip", table, "postrouting", _is(_meta("oifname"), uplink),
                      {"masquerade": None}))
    for f in forwards:
        cmds.append(_rule("ip", table, "prerouting", _is(_meta("iifname"), uplink),
                          _is(_field(f.proto, "dport"), f.host_port),
                          {"dnat": {"addr": f.ip, "port": f.port}}))
    return cmds


def host_table(table: str, uplink: str, transfer: IPv4Network, router_ip: IPv4Address,
               forwards: Iterable[Forward]) -> list[Cmd]:
    """The batch that (re)makes a router's table in the host."""
    cmds = _replace("ip", table)
    cmds.append(_chain("ip", table, "prerouting", hook="prerouting", prio=-100, type="nat"))
    cmds.append(_chain("ip", table, "output", hook="output", prio=-100, type="nat"))
    cmds.append(_chain("ip", table, "postrouting", hook="postrouting", prio=100, type="nat"))
    cmds.append(_chain("ip", table, "isolate", hook="forward", prio=0))
    local = _is({"fib": {"result": "type", "flags": ["daddr"]}}, "local")
    for f in forwards:
        port = _is(_field(f.proto, "dport"), f.host_port)
        dnat = {"dnat": {"addr": str(router_ip), "port": f.host_port}}
        cmds.append(_rule("ip", table, "prerouting", local,
                          _is(_meta("iifname"), uplink, "!="), port, dnat))
        cmds.append(_rule("ip", table, "output", local, port, dnat))
    cmds.append(_rule("ip", table, "postrouting", _is(_meta("oifname"), uplink),
                      _is(_ip("saddr"), _addr("127.0.0.0/8")), {"masquerade": None}))
    cmds.append(_rule("ip", table, "postrouting", _is(_ip("saddr"), _addr(str(transfer))),
                      _is(_meta("oifname"), UPLINK_WILDCARD, "!="),
                      _is(_meta("oifname"), BRIDGE_WILDCARD, "!="), {"masquerade": None}))
    cmds.append(_rule("ip", table, "isolate", _is(_meta("iifname"), uplink),
                      _is(_meta("oifname"), UPLINK_WILDCARD), _DROP))
    return cmds


def qemu_table(table: str, uid: int) -> list[Cmd]:
    """The host's table that keeps guests on user-mode networking off the host itself:
    QEMU's user (``uid``) may open no TCP connection to an address of the host (slirp makes
    a guest's connection to 10.0.2.2 one from QEMU to 127.0.0.1), so no guest reaches the
    daemon's API port or any other host service that way. Forwards into guests still work:
    their connections are QEMU's answers, not new ones."""
    return [*_replace("inet", table),
            _chain("inet", table, "out", hook="output"),
            _rule("inet", table, "out", _is(_meta("skuid"), uid),
                  _is({"fib": {"result": "type", "flags": ["daddr"]}}, "local"),
                  _is(_meta("l4proto"), "tcp"),
                  _is({"ct": {"key": "state"}}, "new", op="in"),
                  {"counter": None}, {"reject": {"type": "tcp reset"}})]


# -- JSON pieces -----------------------------------------------------------------------------

def _table(family: str, name: str) -> Cmd:
    return {"family": family, "name": name}


def _replace(family: str, name: str) -> list[Cmd]:
    table = {"table": _table(family, name)}
    return [{"add": table}, {"delete": table}, {"add": table}]


def _chain(family: str, table: str, name: str, *, hook: str | None = None, prio: int = 0,
           type: str = "filter") -> Cmd:
    chain: Cmd = {"family": family, "table": table, "name": name}
    if hook is not None:
        chain.update(type=type, hook=hook, prio=prio, policy="accept")
    return {"add": {"chain": chain}}


def _rule(family: str, table: str, chain: str, *expr: Cmd) -> Cmd:
    return {"add": {"rule": {"family": family, "table": table, "chain": chain,
                             "expr": list(expr)}}}


def _is(left: Cmd, right: object, op: str = "==") -> Cmd:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> Cmd:
    return {"meta": {"key": key}}


def _field(protocol: str, field: str) -> Cmd:
    return {"payload": {"protocol": protocol, "field": field}}


def _ip(field: str) -> Cmd:
    return _field("ip", field)


def _addr(cidr: str) -> object:
    net = IPv4Network(cidr)
    if net.prefixlen == 32:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}
