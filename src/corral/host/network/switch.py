"""A network (virtual switch) made real: a bridge, its DHCP/DNS namespace, its nft tables,
and the taps of the VMs' NICs.

::

    host                                              corral-nlan (if DHCP)
    ┌──────────────────────────────────────────┐      ┌───────────────────────────┐
    │ crl-br-lan ── crl-vdlan ═════════════════╪══════╪═ crl-vdlan 10.20.0.2/24   │
    │   │  │                                   │      │   dnsmasq (DHCP + DNS)    │
    │   │  └── crl-tweb.0  (QEMU of VM web)    │      └───────────────────────────┘
    │   └───── crl-vlgw.lan ═══ router gw (its leg carries the gateway 10.20.0.1)  │
    │ nft: bridge corral-nlan (anti-spoofing), inet corral-nlan (firewall)         │
    └──────────────────────────────────────────────────────────────────────────────┘

The bridge has no address: the host takes no part in a network unless a router with an
uplink joins it. :func:`ensure_network` makes the network (all or nothing) and is safe to
call again after a restart; :func:`update_network` follows NICs and firewall rules coming
and going (the hosts file of dnsmasq and both nft tables, each replaced atomically);
:func:`ensure_tap` makes a NIC's tap, owned by its VM. Removal goes through
:func:`corral.host.network.state.remove` with the records these return.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Interface

from corral.errors import CorralError
from corral.host.network import dnsmasq, links, overlay
from corral.host.network.dnsmasq import Dnsmasq
from corral.host.network.ipam import NetworkPlan, Port
from corral.host.network.nft import OPEN, Firewall, Nft, bridge_filtering, network_tables
from corral.host.network.state import Build, Host, Made


def ensure_network(host: Host, plan: NetworkPlan, ports: Sequence[Port] = (),
                   firewall: Firewall = OPEN) -> Made:
    """Make whatever of the network is missing; return every record of it.

    :raises CorralError: (``CommandFailed`` for a host command) when a part cannot be made;
        the parts this call made are removed again.
    """
    with Build(f"network:{plan.name}") as build:
        build.add("bridge", plan.bridge, host.netns,
                  links.add_bridge(plan.bridge, host.netns))
        if plan.vni is not None:
            if host.underlay is None:
                raise CorralError(f"network '{plan.name}' spans hosts, and this host has no "
                                  "underlay address for its VXLAN port (cluster.address)")
            build.add("vxlan", plan.vxlan, host.netns, overlay.add_vxlan(
                plan.vxlan, plan.vni, host.underlay, plan.bridge, netns=host.netns))
        if plan.dhcp:
            build.add("netns", plan.netns, None, links.add_netns(plan.netns))
            address = IPv4Interface(f"{plan.dhcp_server}/{plan.network.prefixlen}")
            build.add("veth", plan.veth, host.netns, links.add_veth(
                plan.veth, plan.netns, netns=host.netns, bridge=plan.bridge,
                peer_address=address))
            server = _server(host, plan)
            was_running = dnsmasq.running(server.pidfile) is not None
            dnsmasq.start(server, ports)
            build.add("dnsmasq", plan.veth, plan.netns, not was_running, str(server.dir))
        existing = set(Nft(host.netns).tables())
        _apply_tables(host, plan, ports, firewall)
        for family in ("bridge", "inet"):
            build.add("nft_table", plan.netns, host.netns,
                      (family, plan.netns) not in existing, family)
    return build.result()


def update_network(host: Host, plan: NetworkPlan, ports: Sequence[Port],
                   firewall: Firewall = OPEN) -> None:
    """Bring DHCP reservations, anti-spoofing and the firewall in line with ``ports`` and
    ``firewall`` (every NIC of the network, and its rules).

    :raises CorralError: when the new rules cannot be applied; the old ones then stay.
    """
    _apply_tables(host, plan, ports, firewall)
    if plan.dhcp:
        dnsmasq.reload(_server(host, plan), ports)


def leases(host: Host, plan: NetworkPlan) -> dict[str, str]:
    """MAC -> address of every DHCP lease the network's dnsmasq has handed out."""
    return dnsmasq.leases(_server(host, plan)) if plan.dhcp else {}


def _server(host: Host, plan: NetworkPlan) -> Dnsmasq:
    return Dnsmasq.of(plan, host.run_dir / plan.netns)


def _apply_tables(host: Host, plan: NetworkPlan, ports: Sequence[Port],
                  firewall: Firewall) -> None:
    if firewall != OPEN and not bridge_filtering(host.netns):
        raise CorralError("firewall rules need bridged traffic to pass the IP hooks: load "
                          "br_netfilter and set net.bridge.bridge-nf-call-iptables=1")
    Nft(host.netns).apply(network_tables(plan, ports, firewall))


def ensure_tap(host: Host, plan: NetworkPlan, port: Port, uid: int | None = None) -> Made:
    """Make the tap of ``port`` on the network's bridge, owned by its VM (and by ``uid``
    for an unprivileged QEMU). QEMU opens it with ``-netdev tap,ifname=IFNAME,script=no,
    downscript=no,vnet_hdr=on`` and gives the guest ``port.mac``.

    :raises CommandFailed: when it cannot be made (the bridge is missing, say).
    """
    with Build(f"vm:{port.vm}") as build:
        build.add("tap", port.ifname, host.netns,
                  links.add_tap(port.ifname, plan.bridge, host.netns, uid))
    return build.result()
