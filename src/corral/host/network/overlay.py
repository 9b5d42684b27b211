"""VXLAN overlays: the bridges of one network on several hosts joined into one layer-2
segment, so that its VMs reach each other (and its one DHCP/DNS server) wherever they run.

Each host that has a VM on the network gets a VXLAN port on the network's bridge (``crl-vx…``),
with the network's VNI, bound to the host's underlay address. Learning stays on, and the
flood list (the all-zero FDB entries, head-end replication) holds exactly the other hosts of
the network: no multicast, which underlays of clouds and these test hosts do not carry. The
port's MTU is the underlay's less the 50 bytes of VXLAN's own headers; a bridge takes the
smallest MTU of its ports, so guests on an overlay network are told that MTU by DHCP.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address
from typing import Any

from corral.host.network.links import _attach, _index, _netlink, _settle
from corral.host.network.names import check

PORT = 4789          # IANA's VXLAN port
OVERHEAD = 50        # outer Ethernet, IPv4, UDP and VXLAN headers
FLOOD = "00:00:00:00:00:00"


def add_vxlan(name: str, vni: int, local: IPv4Address, bridge: str, *,
              netns: str | None = None, underlay_mtu: int = 1500, port: int = PORT) -> bool:
    """A VXLAN port ``name`` for ``vni`` from ``local``, attached to ``bridge`` and up; True
    when it had to be made."""
    check("vxlan", name)
    if not 0 < vni < 1 << 24:
        raise ValueError(f"a VNI is 1..{(1 << 24) - 1}, not {vni}")

    def make(ipr: Any) -> bool:
        created = _index(ipr, name) is None
        if created:
            ipr.link("add", ifname=name, kind="vxlan", vxlan_id=vni,
                     vxlan_local=str(local), vxlan_port=port, vxlan_learning=1,
                     mtu=underlay_mtu - OVERHEAD)
        _settle(ipr, name, created, lambda: _attach(ipr, name, bridge))
        return created
    return _netlink(netns, ["link", "add", name, "type", "vxlan", "id", str(vni)], make)


def peers(name: str, netns: str | None = None) -> set[IPv4Address]:
    """The hosts ``name`` floods to."""
    def read(ipr: Any) -> set[IPv4Address]:
        index = _index(ipr, name)
        out = set()
        for entry in ipr.fdb("dump", ifindex=index):
            if entry.get_attr("NDA_LLADDR") == FLOOD and entry.get_attr("NDA_DST"):
                out.add(IPv4Address(entry.get_attr("NDA_DST")))
        return out
    return _netlink(netns, ["bridge", "fdb", "show", "dev", name], read)


def set_peers(name: str, hosts: Iterable[IPv4Address], netns: str | None = None) -> None:
    """Make the flood list of ``name`` exactly ``hosts`` (the network's other hosts)."""
    want = set(hosts)
    have = peers(name, netns)

    def change(ipr: Any) -> None:
        index = _index(ipr, name)
        for host in want - have:
            ipr.fdb("append", ifindex=index, lladdr=FLOOD, dst=str(host))
        for host in have - want:
            ipr.fdb("del", ifindex=index, lladdr=FLOOD, dst=str(host))
    _netlink(netns, ["bridge", "fdb", "replace", "dev", name], change)
