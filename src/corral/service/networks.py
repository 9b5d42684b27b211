"""Virtual networks as the daemon runs them: switches, their firewalls, and the daemon's
bookkeeping of every host object it made (the parts themselves are :mod:`corral.host.network`).

The units and who owns what::

    network lan    bridge, DHCP/DNS namespace + dnsmasq, nft tables     records network:lan
    router gw      namespace, uplink veth, NAT tables                   records router:gw
    leg gw/lan     veth from lan's bridge into gw, route back           records router:gw/lan
    VM web         a tap per network NIC while its QEMU runs            records vm:web
    NIC web/nic0   address, MAC and tap name, planned once              in web's spec

Every change has the same shape. First, *synchronously* (no ``await`` between check and
write, so two requests cannot both take an address): check the request, plan it with the
library's pure planners and write the unit's row (:mod:`corral.store.networks`). Then, under
one lock for the whole host, make or remove the parts in a thread (each call takes 5-100 ms)
and write their records. A failure while making rolls back the parts (the library does) and
the row (this layer does). A daemon killed half-way finds rows whose parts are missing (it
makes them) and records without a row (it removes their parts) when it starts again:
:func:`reconcile` calls the same ``ensure_*`` functions with the full state, so nothing is
made twice and nothing is lost.

Only a daemon running as root makes bridges, taps, namespaces and nft tables; any other gets
:class:`~corral.errors.NeedsRoot` with a one-line reason, and offers VMs user-mode networking
(``--nic user,hostfwd=…``) instead. The files of each network's dnsmasq are under
``/run/corral-<tag>/networks.d/`` (:attr:`corral.config.Paths.networks`), not in the home:
dnsmasq reads them as ``nobody``, so that directory and the ones above it must be searchable
by others, and the home may then stay private (mode 0700).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING, Any

from corral.domain.specs import NicSpec, check_name
from corral.domain.states import State
from corral.errors import AlreadyExists, InUse, InvalidSpec, NotFound
from corral.host.network import (
    Port,
    ensure_network,
    leases,
    parse_rule,
    plan_network,
    remove,
)
from corral.host.network.nft import Policy
from corral.service import access, nics, overlaynets, routers
from corral.service.netstate import Networks, reap_dnsmasq_zombies, require_root, taps_counters
from corral.store.networks import NetworkRow, RuleRow

if TYPE_CHECKING:
    from corral.store.db import VMRecord

log = logging.getLogger(__name__)


# -- networks --------------------------------------------------------------------------------

async def create(net: Networks, name: str, subnet: str, dhcp: bool = True,
                 isolated: bool = False) -> dict[str, Any]:
    """Make network ``name``: a bridge, and with ``dhcp`` a dnsmasq serving its NICs'
    reservations and names. ``isolated``: no router may ever join it.

    :raises InvalidSpec: a bad name, or a subnet that is malformed, too small or overlaps
        another network's.
    :raises AlreadyExists: the name is taken.
    :raises NeedsRoot: the daemon does not run as root.
    :raises CorralError: a part could not be made (nothing is left of it then).
    """
    if net.overlay is not None:  # in a cluster every network spans its hosts
        await overlaynets.create(net, name, subnet, dhcp, isolated)
        return await show(net, name)
    check_name(name)
    require_root(f"create network '{name}'")
    if name in net.db.networks:
        raise AlreadyExists(f"a network named '{name}' exists")
    existing = {f"network '{n}'": r.plan.network for n, r in net.db.networks.items()}
    plan = plan_network(name, subnet, existing=existing, taken=net.taken(), dhcp=dhcp)
    net.db.add_network(NetworkRow(plan, isolated, "accept", time.time()),
                       access.project_for_new())
    try:
        async with net.lock:
            made = await net.call(ensure_network, net.host, plan, [], net.firewall(name))
            net.db.set_records(f"network:{name}", made.records)
            reap_dnsmasq_zombies()
    except BaseException:
        net.db.delete_network(name)
        raise
    return await show(net, name)


async def remove_network(net: Networks, name: str, force: bool = False) -> list[str]:
    """Remove network ``name`` and every part of it. With ``force``, first take off it what
    uses it: forwards to its addresses, the NICs of VMs on it (hot-unplugged from running
    VMs) and its router's leg; return what was taken off (``"NIC nic1 of web"``,
    ``"forward tcp 8080 on gw"``, ``"router gw leg on lan"``). Whatever was taken off stays
    so if a later step fails.

    :raises InUse: NICs or a router use it (with ``force``: a VM whose NIC cannot be taken
        off now: one present at boot in a running VM, or any NIC of a paused, saved or
        busy VM).
    :raises NotFound: no such network.
    :raises Timeout: a running guest did not release its NIC (it stays attached).
    """
    if net.overlay is not None and (name not in net.db.networks
                                    or net.db.networks[name].plan.vni is not None):
        if force:
            raise InvalidSpec("force", f"'{name}' spans the cluster's hosts: destroy or "
                                       "detach its VMs' NICs first (--force works on one host)")
        await overlaynets.remove_network(net, name)
        return []
    net.network(name)
    removed = await _take_users_off(net, name) if force else []
    users = [f"{rec.name} ({nic.device(i)})" for rec in net.rt.db.list_vms()
             for i, nic in enumerate(rec.spec.nics) if nic.network == name]
    if name in net.db.legs:
        users.append(f"router {net.db.legs[name].router}")
    if users:
        raise InUse("network", name, "remove", users)
    net.db.delete_network(name)
    async with net.lock:
        await net.call(remove, net.db.records(f"network:{name}"))
        net.db.drop_records(f"network:{name}")
    return removed


def _nic_removable(rec: VMRecord, nic: NicSpec) -> bool:
    """Whether a NIC can be taken off its VM now: the VM's QEMU is not running, or it runs
    and the NIC was hot-plugged (behind a hot-plug port; boot NICs have none)."""
    if rec.state in (State.DEFINED, State.STOPPED, State.CRASHED):
        return True
    return rec.state == State.RUNNING and nic.port is not None


async def _take_users_off(net: Networks, name: str) -> list[str]:
    """``remove_network``'s force: forwards, NICs and the router's leg, in that order (each
    of the later ones is refused while the earlier ones exist)."""
    on_it = [(rec, i, nic) for rec in net.rt.db.list_vms() for i, nic in enumerate(rec.spec.nics)
             if nic.network == name]
    stuck = [f"{rec.name} ({nic.device(i)}, {rec.state.value}"
             f"{', present at boot' if rec.state == State.RUNNING else ''})"
             for rec, i, nic in on_it if not _nic_removable(rec, nic)]
    if stuck:
        raise InUse("network", name, "remove", stuck)
    removed = []
    subnet = IPv4Network(net.network(name).plan.subnet)
    for (proto, port), row in list(net.db.forwards.items()):
        if IPv4Address(row.forward.ip) in subnet:
            await routers.remove_forward(net, row.forward.router, proto, port)
            removed.append(f"forward {proto} {port} on {row.forward.router}")
    for rec, i, nic in on_it:
        await nics.detach(net, rec.name, nic.mac)
        removed.append(f"NIC {nic.device(i)} of {rec.name}")
    leg = net.db.legs.get(name)
    if leg is not None:
        await routers.detach_network(net, leg.router, name)
        removed.append(f"router {leg.router} leg on {name}")
    return removed


def view(net: Networks, name: str) -> dict[str, Any]:
    """A network as stored (no host calls)."""
    row = net.network(name)
    plan = row.plan
    leg = net.db.legs.get(name)
    return {
        "name": name, "subnet": plan.subnet, "gateway": plan.gateway,
        "dhcp": plan.dhcp, "dhcp_server": plan.dhcp_server if plan.dhcp else None,
        "pool": f"{plan.pool_start}-{plan.pool_end}", "isolated": row.isolated,
        "bridge": plan.bridge, "router": leg.router if leg else None, "policy": row.policy,
        "rules": [rule_view(r) for r in net.db.rules.values() if r.network == name],
        "ports": [{"vm": p.vm, "nic": _nic_id(net, p), "mac": p.mac, "ip": p.ip,
                   "tap": p.ifname, "dns": f"{p.hostname}.corral" if p.hostname else None,
                   **({"host": overlaynets.host_of(net, p.vm)} if net.overlay else {})}
                  for p in net.ports(name)],
        "created_at": row.created_at, **overlaynets.describe(net, name),
    }


def _nic_id(net: Networks, port: Port) -> str | None:
    rec = net.rt.db.get_vm(port.vm)
    for i, nic in enumerate(rec.spec.nics if rec else []):
        if nic.ifname == port.ifname:
            return nic.device(i)
    return None


async def show(net: Networks, name: str) -> dict[str, Any]:
    """A network with, for each port, the address its DHCP lease holds and its counters.

    :raises NotFound: no such network.
    """
    if net.overlay is not None:
        await net.call(net.overlay.refresh)
    if name not in net.db.networks and overlaynets.cluster_network(net, name):
        return overlaynets.view_elsewhere(net, name)
    out = view(net, name)
    held = await net.call(leases, net.host, net.network(name).plan)
    stats = await net.call(taps_counters, [p["tap"] for p in out["ports"]])
    for port, stat in zip(out["ports"], stats, strict=True):
        port["lease"] = held.get(port["mac"])
        port["counters"] = stat
    return out


def list_all(net: Networks) -> list[dict[str, Any]]:
    if net.overlay is not None:
        net.overlay.refresh()  # a few ms: the cluster's networks as they are now
    return [*(view(net, name) for name in net.db.networks
              if access.in_scope(net.db.project_of("network", name))),
            *(overlaynets.view_elsewhere(net, name) for name in overlaynets.elsewhere(net))]


# -- firewall --------------------------------------------------------------------------------

def rule_view(row: RuleRow) -> dict[str, Any]:
    r = row.rule
    allow = r.proto if r.port is None else f"{r.proto}/{r.port}"
    return {"id": row.id, "network": row.network, "vm": r.vm, "allow": allow,
            "from": r.source}


def _networks_of(net: Networks, vm: str) -> list[str]:
    rec = net.rt.db.get_vm(vm)
    nets = [n.network for n in (rec.spec.nics if rec else []) if n.network]
    return sorted(set(nets))


async def add_rule(net: Networks, target: str, allow: str, source: str = "0.0.0.0/0"
                   ) -> dict[str, Any]:
    """Allow ``allow`` (``tcp/22``, ``udp``, ``icmp``) from ``source`` to every VM of a
    network, or to one VM on each of its networks. ``target`` is a network's or a VM's name
    (``network:NAME`` or ``vm:NAME`` when both exist).

    :raises InvalidSpec: a malformed rule, or a target that names nothing (or two things).
    :raises NeedsRoot: the daemon does not run as root.
    :raises CorralError: the host cannot filter bridged traffic (br_netfilter).
    """
    require_root("add a firewall rule")
    kind, _, name = target.rpartition(":")
    rec = net.rt.db.get_vm(name)
    is_net = name in net.db.networks and access.visible(net.db.project_of("network", name))
    is_vm = rec is not None and access.visible(rec.project)
    if kind not in ("", "network", "vm") or (kind == "network" and not is_net) \
            or (kind == "vm" and not is_vm) or not (is_net or is_vm):
        raise InvalidSpec("target", f"'{target}' is neither a network nor a VM")
    if not kind and is_net and is_vm:
        raise InvalidSpec("target", f"'{name}' is a network and a VM: write network:{name} "
                                    f"or vm:{name}")
    for_vm = kind == "vm" or (not kind and not is_net)
    row = net.db.add_rule(None if for_vm else name,
                          parse_rule(allow, source, vm=name if for_vm else None))
    affected = _networks_of(net, name) if for_vm else [name]
    try:
        async with net.lock:
            for network in affected:
                await net.apply(network)
    except BaseException:
        net.db.delete_rules([row.id])
        raise
    return rule_view(row)


async def remove_rule(net: Networks, rule_id: int) -> None:
    """:raises NotFound: no rule with that id."""
    row = net.db.rules.get(rule_id)
    if row is None or not _rule_visible(net, row.network, row.rule.vm):
        raise NotFound(f"no firewall rule {rule_id}; see 'corral firewall list'")
    affected = [row.network] if row.network else _networks_of(net, str(row.rule.vm))
    net.db.delete_rules([rule_id])
    async with net.lock:
        for network in affected:
            await net.apply(network)


async def set_policy(net: Networks, network: str, policy: str) -> dict[str, Any]:
    """Set what happens to traffic to the network's VMs that no rule allows.

    :raises InvalidSpec: a policy other than accept or drop.
    :raises NotFound: no such network.
    """
    require_root("set a firewall policy")
    before = net.network(network).policy
    if policy not in ("accept", "drop"):
        raise InvalidSpec("policy", f"'{policy}': expected accept or drop")
    new: Policy = "accept" if policy == "accept" else "drop"
    net.db.set_policy(network, new)
    try:
        async with net.lock:
            await net.apply(network)
    except BaseException:
        net.db.set_policy(network, before)
        raise
    return view(net, network)


def list_rules(net: Networks) -> dict[str, Any]:
    return {"policies": {n: r.policy for n, r in net.db.networks.items()
                         if _rule_visible(net, n, None, access.in_scope)},
            "rules": [rule_view(r) for r in net.db.rules.values()
                      if _rule_visible(net, r.network, r.rule.vm, access.in_scope)]}


def _rule_visible(net: Networks, network: str | None, vm: str | None,
                  allowed: Callable[[str], bool] = access.visible) -> bool:
    """Whether the caller may see a firewall rule of ``network`` (or of VM ``vm``)."""
    if network is not None:
        return allowed(net.db.project_of("network", network))
    rec = net.rt.db.get_vm(vm) if vm else None
    return rec is None or allowed(rec.project)
