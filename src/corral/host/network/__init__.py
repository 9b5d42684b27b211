"""The host side of Corral's virtual networks: switches, routers, DHCP/DNS and firewalls made
of Linux bridges, taps, veths, network namespaces, nftables and dnsmasq.

Two steps for everything, the way the daemon uses it:

1. **plan** (pure, in :mod:`.ipam`, :mod:`.router`, :mod:`.nft`): check the request against
   what is recorded, pick addresses, MACs and Linux names. Bad input raises
   :class:`~corral.errors.InvalidSpec` naming the field, before anything exists.
2. **make** (:mod:`.switch`, :mod:`.router`): realise a plan, all or nothing; return the
   records of what exists (:mod:`.state`), which the daemon stores to remove exactly those
   objects later, and to make the missing ones again after a restart.

The daemon's calls, in order of a typical life::

    net   = plan_network("lan", "10.20.0.0/24", existing=..., taken=...)
    made  = ensure_network(host, net)                      # bridge, dnsmasq, nft tables
    port  = plan_port(net, "web", 0, ports=..., taken=..., macs=...)
    ensure_tap(host, net, port)                            # before QEMU starts
    update_network(host, net, ports, firewall)             # DHCP entry, anti-spoofing
    gw    = plan_router("gw", uplink=True, taken=..., transfers=...)
    ensure_router(host, gw)
    attach(host, gw, plan_leg(gw, net, legs=..., taken=...), net)
    set_forwards(host, gw, [plan_forward(gw, "tcp", 8080, port.ip, 80, ...)])
    remove(records)                                        # detach, rm, destroy

After a restart the daemon calls the same ``ensure_*`` functions (and ``attach``) with what it
stored: plans, every port of each network, firewall and forwards, since each call rebuilds
the whole nft ruleset of its unit from its arguments. ``Made.new`` says what had to be
rebuilt. Then ``collect_garbage(host, keep=all_records)`` removes what no record names.

Every function is synchronous: making a network or a router takes 50-100 ms, an update or a
tap 5-25 ms. From asyncio code call them through ``asyncio.to_thread``, and serialise the
changes to one network or router (each rewrites the unit's whole ruleset). Names, the reasons
behind each design choice and the traps met on the way are in the docstrings of the modules.
"""

from corral.host.network.ipam import NetworkPlan, Port, plan_network, plan_port
from corral.host.network.links import Counters, counters
from corral.host.network.nft import OPEN, Firewall, Forward, Rule, parse_rule
from corral.host.network.router import (
    Leg,
    RouterPlan,
    attach,
    ensure_router,
    plan_forward,
    plan_leg,
    plan_router,
    set_forwards,
)
from corral.host.network.state import Host, Made, Record, collect_garbage, remove
from corral.host.network.switch import ensure_network, ensure_tap, leases, update_network

__all__ = [
    "OPEN", "Counters", "Firewall", "Forward", "Host", "Leg", "Made", "NetworkPlan", "Port",
    "Record", "RouterPlan", "Rule", "attach", "collect_garbage", "counters", "ensure_network",
    "ensure_router", "ensure_tap", "leases", "parse_rule", "plan_forward", "plan_leg",
    "plan_network", "plan_port", "plan_router", "remove", "set_forwards", "update_network",
]
