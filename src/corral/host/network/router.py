"""A router made real: a network namespace that forwards IPv4 between its legs.

::

    host                                           corral-rgw (ip_forward=1)
    crl-br-lan ── crl-vlgw.lan ══════════════════  crl-vlgw.lan 10.20.0.1/24 (lan's gateway)
    crl-br-dmz ── crl-vlgw.dmz ══════════════════  crl-vlgw.dmz 10.30.0.1/24 (dmz's gateway)
    crl-vugw 10.255.0.1/30 ══════════════════════  crl-vugw 10.255.0.2/30, default route
      routes 10.20.0.0/24, 10.30.0.0/24               via 10.255.0.1; masquerade out of it
      via 10.255.0.2                                   and DNAT of forwarded ports

Each attached network gets a *leg*: a veth from its bridge into the router, carrying the
network's gateway address, so the networks of one router reach each other and networks of
different routers do not. With an *uplink*, the router also has a veth to the host on a /30
transfer subnet: traffic leaving through it is masqueraded (the host sees the router's
transfer address), the host routes each attached subnet back through it, and port forwards
publish ``VM:PORT`` on a host port (see :mod:`corral.host.network.nft` for the rules).

:func:`ensure_router` and :func:`attach` are all or nothing and safe to call again after a
restart; :func:`set_forwards` replaces the forwarded ports atomically. Detaching a network
is :func:`corral.host.network.state.remove` with the records :func:`attach` returned;
removing a router is the same with its own (its legs go with its namespace).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from corral.errors import InvalidSpec
from corral.host.network import links, names
from corral.host.network.ipam import NetworkPlan, assign_transfer
from corral.host.network.nft import Cmd, Forward, Nft, host_table, router_table
from corral.host.network.state import Build, Host, Made


@dataclass(frozen=True)
class RouterPlan:
    """A router: its namespace (also the name of its nft tables) and its optional uplink."""

    name: str
    netns: str
    uplink: str | None = None  # the veth to the host
    transfer: str | None = None  # its /30: host end first, router end second

    @property
    def host_ip(self) -> IPv4Interface:
        return self._end(1)

    @property
    def router_ip(self) -> IPv4Interface:
        return self._end(2)

    def _end(self, offset: int) -> IPv4Interface:
        if self.transfer is None:
            raise InvalidSpec("router", f"router '{self.name}' has no uplink")
        net = IPv4Network(self.transfer)
        return IPv4Interface(f"{net.network_address + offset}/{net.prefixlen}")


@dataclass(frozen=True)
class Leg:
    """The veth joining ``router`` to ``network``, with the network's gateway address."""

    router: str
    network: str
    veth: str
    address: str  # "10.20.0.1/24"


def plan_router(name: str, *, uplink: bool, taken: Collection[str],
                transfers: Iterable[str] = ()) -> RouterPlan:
    """Plan router ``name``; ``taken`` holds every recorded Linux name and ``transfers`` the
    transfer subnets of the recorded routers."""
    if not uplink:
        return RouterPlan(name, names.make("router", name, taken=taken))
    return RouterPlan(name, names.make("router", name, taken=taken),
                      names.make("uplink", name, taken=taken), str(assign_transfer(transfers)))


def plan_leg(router: RouterPlan, network: NetworkPlan, *, legs: Iterable[Leg],
             taken: Collection[str]) -> Leg:
    """Plan the leg of ``router`` on ``network``; ``legs`` are every recorded leg.

    :raises InvalidSpec: (field ``network``) when the network has a router already (two
        legs would carry the same gateway address).
    """
    for leg in legs:
        if leg.network == network.name:
            raise InvalidSpec("network", f"network '{network.name}' is already attached to "
                              f"router '{leg.router}'")
    return Leg(router.name, network.name, names.make("leg", router.name, network.name,
                                                     taken=taken),
               f"{network.gateway}/{network.network.prefixlen}")


def plan_forward(router: RouterPlan, proto: str, host_port: int, ip: str, port: int, *,
                 forwards: Iterable[Forward], subnets: Iterable[str]) -> Forward:
    """Plan publishing ``ip``:``port`` on host port ``host_port``. ``forwards`` are every
    recorded forward (of every router); ``subnets`` those of the router's networks.

    :raises InvalidSpec: (field ``proto``, ``host_port``, ``port`` or ``ip``) when the router
        has no uplink, a port is out of range, the host port is forwarded already, or ``ip``
        is on none of the router's networks.
    """
    if router.uplink is None:
        raise InvalidSpec("router", f"router '{router.name}' has no uplink to forward from")
    if proto not in ("tcp", "udp"):
        raise InvalidSpec("proto", f"'{proto}': expected tcp or udp")
    for field, value in (("host_port", host_port), ("port", port)):
        if not 0 < value < 65536:
            raise InvalidSpec(field, f"{value} is not a port number (1-65535)")
    for f in forwards:
        if (f.proto, f.host_port) == (proto, host_port):
            raise InvalidSpec("host_port", f"{proto}/{host_port} is already forwarded by "
                              f"router '{f.router}' to {f.ip}:{f.port}")
    if not any(IPv4Address(ip) in IPv4Network(s) for s in subnets):
        raise InvalidSpec("ip", f"{ip} is on no network of router '{router.name}'")
    return Forward(router.name, proto, host_port, ip, port)


def ensure_router(host: Host, plan: RouterPlan, forwards: Sequence[Forward] = ()) -> Made:
    """Make whatever of the router is missing (not its legs); return every record of it.

    :raises CorralError: (``CommandFailed`` for a host command) when a part cannot be made;
        the parts this call made are removed again.
    """
    with Build(f"router:{plan.name}") as build:
        build.add("netns", plan.netns, None, links.add_netns(plan.netns))
        links.write_sysctl(plan.netns, "net/ipv4/ip_forward", "1")
        if plan.uplink is not None:
            build.add("veth", plan.uplink, host.netns, links.add_veth(
                plan.uplink, plan.netns, netns=host.netns, peer_address=plan.router_ip))
            links.add_address(plan.uplink, plan.host_ip, host.netns)
            # lets the host's NAT send connections to 127.0.0.1:PORT out of the uplink
            links.write_sysctl(host.netns, f"net/ipv4/conf/{plan.uplink}/route_localnet", "1")
            links.add_route(IPv4Network("0.0.0.0/0"), plan.host_ip.ip, plan.netns)
            for netns, batch in _nat(plan, forwards, host.netns).items():
                existing = set(Nft(netns).tables())
                Nft(netns).apply(batch)
                build.add("nft_table", plan.netns, netns, ("ip", plan.netns) not in existing,
                          "ip")
    return build.result()


def set_forwards(host: Host, plan: RouterPlan, forwards: Sequence[Forward]) -> None:
    """Publish exactly ``forwards`` (all of this router's). The router's table, then the
    host's, is each replaced atomically.

    :raises InvalidSpec: when the router has no uplink.
    :raises CommandFailed: when nft refuses the new rules.
    """
    for netns, batch in _nat(plan, forwards, host.netns).items():
        Nft(netns).apply(batch)


def _nat(plan: RouterPlan, forwards: Sequence[Forward],
         host_netns: str | None) -> dict[str | None, list[Cmd]]:
    if plan.uplink is None or plan.transfer is None:
        raise InvalidSpec("router", f"router '{plan.name}' has no uplink")
    return {
        plan.netns: router_table(plan.netns, plan.uplink, forwards),
        host_netns: host_table(plan.netns, plan.uplink, IPv4Network(plan.transfer),
                               plan.router_ip.ip, forwards),
    }


def attach(host: Host, plan: RouterPlan, leg: Leg, network: NetworkPlan) -> Made:
    """Give the router its leg on ``network`` (and, with an uplink, the host a route back);
    return the leg's records (owner ``router:R/NET``).

    :raises CorralError: when a part cannot be made; the parts this call made are removed.
    """
    with Build(f"router:{plan.name}/{network.name}") as build:
        build.add("veth", leg.veth, host.netns, links.add_veth(
            leg.veth, plan.netns, netns=host.netns, bridge=network.bridge,
            peer_address=IPv4Interface(leg.address)))
        if plan.uplink is not None:
            made = links.add_route(network.network, plan.router_ip.ip, host.netns)
            build.add("route", network.subnet, host.netns, made, str(plan.router_ip.ip))
    return build.result()
