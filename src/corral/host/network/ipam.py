"""Addresses and names of networks and NICs, decided before anything is made (pure).

A network is an IPv4 subnet of at least /29. Its first host address is the *gateway*, worn
by the leg of the router the network is attached to; the second is the *DHCP server*, the
address of the network's dnsmasq (DHCP and DNS). NICs get the other host addresses: a fixed
one when asked for (anywhere in the subnet but the two above), otherwise the lowest free one
in the *pool*. In a subnet of more than 32 hosts the pool starts at the tenth host, leaving
the third to ninth for hand-picked fixed addresses::

    10.20.0.0/24   gateway .1   dhcp .2   fixed anywhere in .3-.254   pool .10-.254

Every NIC gets an address this way, so every lease is bound to a MAC (dnsmasq serves static
leases only) and anti-spoofing knows each port's addresses. MACs are 52:54:00 (QEMU's prefix)
plus three bytes hashed from the NIC's owner, redrawn on a clash with one already recorded.

Routers with an uplink take a /30 *transfer subnet* from :data:`TRANSFER_POOL` (host end
first, router end second); networks may not overlap that pool.

The plans are frozen dataclasses of plain values: ``dataclasses.asdict`` stores one and
``NetworkPlan(**stored)`` brings it back.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from corral.domain.subnets import parse_subnet
from corral.errors import InvalidSpec
from corral.host.network import names

TRANSFER_POOL = IPv4Network("10.255.0.0/16")
QEMU_DEFAULT_MAC = "52:54:00:12:34:56"  # every unconfigured QEMU NIC has it
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


@dataclass(frozen=True)
class NetworkPlan:
    """A virtual switch: its subnet, its service addresses and the names of its parts."""

    name: str
    subnet: str  # "10.20.0.0/24"
    gateway: str  # first host: the router leg's address
    dhcp_server: str  # second host: dnsmasq's address
    pool_start: str
    pool_end: str
    dhcp: bool
    bridge: str
    netns: str  # where dnsmasq runs; also the name of the network's nft tables
    veth: str  # dnsmasq's leg on the bridge
    # a network that spans hosts (see :mod:`.overlay`): its VXLAN id, the MTU its guests
    # are told by DHCP, and the name of each host's VXLAN port; None/"" on one host
    vni: int | None = None
    mtu: int | None = None
    vxlan: str = ""

    @property
    def network(self) -> IPv4Network:
        return IPv4Network(self.subnet)


@dataclass(frozen=True)
class Port:
    """One NIC on a network: the host-side interface (a VM's tap) and the guest's addresses."""

    network: str
    vm: str
    ifname: str
    mac: str
    ip: str
    hostname: str | None  # answered in DNS as NAME.corral; the VM's first NIC on the network


def plan_network(name: str, subnet: str, *, existing: Mapping[str, IPv4Network],
                 taken: Collection[str] = (), dhcp: bool = True,
                 transfer_pool: IPv4Network = TRANSFER_POOL) -> NetworkPlan:
    """Plan network ``name`` on ``subnet``.

    ``existing`` maps a description of each recorded subnet ("network lan") to it; ``taken``
    holds every recorded Linux name.

    :raises InvalidSpec: (field ``subnet``) when the subnet is not an IPv4 network, is smaller
        than /29, or overlaps a recorded one or the transfer pool.
    """
    net = parse_subnet(subnet)
    for what, other in {**existing, "the uplink transfer pool": transfer_pool}.items():
        if net.overlaps(other):
            raise InvalidSpec("subnet", f"{net} overlaps {what} ({other})")
    first = int(net.network_address) + 1
    hosts = net.num_addresses - 2
    start = first + (9 if hosts > 32 else 2)
    return NetworkPlan(
        name=name, subnet=str(net), gateway=str(IPv4Address(first)),
        dhcp_server=str(IPv4Address(first + 1)), pool_start=str(IPv4Address(start)),
        pool_end=str(IPv4Address(first + hosts - 1)), dhcp=dhcp,
        bridge=names.make("bridge", name, taken=taken),
        netns=names.make("network", name, taken=taken),
        veth=names.make("dhcp", name, taken=taken))


def plan_port(plan: NetworkPlan, vm: str, index: int, *, ports: Iterable[Port],
              taken: Collection[str], macs: Collection[str], mac: str | None = None,
              ip: str | None = None) -> Port:
    """Plan NIC ``index`` of ``vm`` on the network of ``plan``.

    ``ports`` are the network's recorded ports; ``taken`` every recorded Linux name; ``macs``
    every recorded MAC.

    :raises InvalidSpec: (field ``ip`` or ``mac``) when a requested address is outside the
        subnet, reserved, malformed or taken.
    """
    ports = list(ports)
    return Port(
        network=plan.name, vm=vm, ifname=names.make("tap", vm, index, taken=taken),
        mac=assign_mac(f"{vm}/{index}", macs, mac),
        ip=assign_ip(plan, {p.ip for p in ports}, ip),
        hostname=None if any(p.vm == vm for p in ports) else vm)


def assign_ip(plan: NetworkPlan, taken: Collection[str], requested: str | None = None) -> str:
    """A host address of the network: ``requested`` after checks, else the lowest free in
    the pool.

    :raises InvalidSpec: (field ``ip``) when ``requested`` is not a usable free host address,
        or when the pool is exhausted.
    """
    net = plan.network
    used = {IPv4Address(a) for a in taken}
    if requested is not None:
        try:
            addr = IPv4Address(requested)
        except ValueError as err:
            raise InvalidSpec("ip", f"'{requested}' is not an IPv4 address") from err
        if addr not in net or addr in (net.network_address, net.broadcast_address):
            raise InvalidSpec("ip", f"{addr} is not a host address of {net}")
        if str(addr) in (plan.gateway, plan.dhcp_server):
            raise InvalidSpec("ip", f"{addr} is reserved for the network's "
                              f"{'gateway' if str(addr) == plan.gateway else 'DHCP server'}")
        if addr in used:
            raise InvalidSpec("ip", f"{addr} is already taken on network '{plan.name}'")
        return str(addr)
    for n in range(int(IPv4Address(plan.pool_start)), int(IPv4Address(plan.pool_end)) + 1):
        if IPv4Address(n) not in used:
            return str(IPv4Address(n))
    raise InvalidSpec("ip", f"network '{plan.name}' has no free address left")


def assign_mac(key: str, taken: Collection[str], requested: str | None = None) -> str:
    """A MAC for the NIC ``key`` (for instance "web/0"): ``requested`` after checks, else
    52:54:00 plus three bytes hashed from ``key``, redrawn while taken.

    :raises InvalidSpec: (field ``mac``) when ``requested`` is malformed, multicast or taken.
    """
    used = {m.lower() for m in taken} | {QEMU_DEFAULT_MAC}
    if requested is not None:
        mac = requested.lower()
        if not _MAC.match(mac):
            raise InvalidSpec("mac", f"'{requested}' is not a MAC address (aa:bb:cc:dd:ee:ff)")
        if int(mac[:2], 16) & 1:
            raise InvalidSpec("mac", f"{mac} is a multicast address")
        if mac in used:
            raise InvalidSpec("mac", f"{mac} is already in use")
        return mac
    salt = 0
    while True:
        tail = hashlib.sha256(f"{key}\0{salt}".encode()).digest()[:3]
        mac = "52:54:00:" + ":".join(f"{b:02x}" for b in tail)
        if mac not in used:
            return mac
        salt += 1


def assign_transfer(taken: Iterable[IPv4Network | str],
                    pool: IPv4Network = TRANSFER_POOL) -> IPv4Network:
    """The first /30 of ``pool`` that no recorded uplink uses.

    :raises InvalidSpec: (field ``uplink``) when the pool is exhausted.
    """
    used = {ipaddress.ip_network(t) for t in taken}
    for candidate in pool.subnets(new_prefix=30):
        if candidate not in used:
            return candidate
    raise InvalidSpec("uplink", f"no free transfer subnet left in {pool}")
