"""Routers as the daemon runs them: network namespaces joining networks, and publishing guest
ports on the host.

A router takes a *leg* on each network attached to it, carrying the network's gateway
address, so that the networks of one router reach each other (and networks of different
routers, or of none, do not). With ``--uplink`` it also has a veth to the host: guests reach
the host and, where the host forwards, beyond it (masqueraded), and *forwards* publish a
guest's port on a host port (``corral router forward gw tcp 8080 web:80``). A forward names
its VM: it follows the VM's address on the router's networks, and goes when the VM goes.

Refusals keep every state reachable from the command line: a network with a router already,
an isolated one, a router that still has legs (``rm``, unless forced: then its forwards and
legs go first), a leg that forwards still use (``detach``), a host port forwarded already
(here or by a VM's user-mode NIC). The order of
writes and the restart behaviour are those of :mod:`corral.service.networks`.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING, Any

from corral.domain.nics import parse_hostfwd
from corral.domain.specs import check_name
from corral.errors import AlreadyExists, InUse, InvalidSpec, NotFound
from corral.host.network import (
    RouterPlan,
    attach,
    ensure_router,
    plan_forward,
    plan_leg,
    plan_router,
    remove,
    set_forwards,
)
from corral.service import access, overlaynets
from corral.service.netstate import require_root
from corral.store.networks import ForwardRow

if TYPE_CHECKING:
    from corral.service.netstate import Networks


def view(net: Networks, name: str) -> dict[str, Any]:
    """A router as stored: its uplink, its legs and its forwards.

    :raises NotFound: no such router.
    """
    plan = net.router(name)
    return {
        "name": name,
        "uplink": plan.uplink is not None,
        "host_address": str(plan.host_ip.ip) if plan.uplink else None,
        "router_address": str(plan.router_ip.ip) if plan.uplink else None,
        "networks": [{"network": leg.network, "address": leg.address}
                     for leg in net.db.legs.values() if leg.router == name],
        "forwards": [forward_view(f) for f in net.db.forwards.values()
                     if f.forward.router == name],
    }


def forward_view(row: ForwardRow) -> dict[str, Any]:
    f = row.forward
    return {"router": f.router, "proto": f.proto, "host_port": f.host_port, "vm": row.vm,
            "ip": f.ip, "port": f.port}


def list_all(net: Networks) -> list[dict[str, Any]]:
    return [view(net, name) for name in net.db.routers
            if access.in_scope(net.db.project_of("router", name))]


async def create(net: Networks, name: str, uplink: bool = False) -> dict[str, Any]:
    """Make router ``name`` (with an uplink to the host if asked).

    :raises InvalidSpec: a bad name, or no transfer subnet left for the uplink.
    :raises AlreadyExists: the name is taken.
    :raises NeedsRoot: the daemon does not run as root.
    :raises CorralError: a part could not be made (nothing is left of it then).
    """
    check_name(name)
    require_root(f"create router '{name}'")
    if name in net.db.routers:
        raise AlreadyExists(f"a router named '{name}' exists")
    plan = plan_router(name, uplink=uplink, taken=net.taken(),
                       transfers=[p.transfer for p in net.db.routers.values() if p.transfer])
    net.db.add_router(plan, access.project_for_new())
    try:
        async with net.lock:
            made = await net.call(ensure_router, net.host, plan, [])
            net.db.set_records(f"router:{name}", made.records)
    except BaseException:
        net.db.delete_router(name)
        raise
    return view(net, name)


async def remove_router(net: Networks, name: str, force: bool = False) -> list[str]:
    """Remove router ``name``. With ``force``, first remove its forwards and detach its
    legs; return what was removed (``"forward tcp 8080 on gw"``, ``"router gw leg on
    lan"``). Whatever was removed stays so if a later step fails.

    :raises InUse: networks are still attached (without ``force``).
    :raises NotFound: no such router.
    """
    net.router(name)
    removed = []
    if force:
        for (proto, port), row in list(net.db.forwards.items()):
            if row.forward.router == name:
                await remove_forward(net, name, proto, port)
                removed.append(f"forward {proto} {port} on {name}")
        for leg in [leg for leg in net.db.legs.values() if leg.router == name]:
            await detach_network(net, name, leg.network)
            removed.append(f"router {name} leg on {leg.network}")
    legs = sorted(leg.network for leg in net.db.legs.values() if leg.router == name)
    if legs:
        raise InUse("router", name, "remove", [f"network {n}" for n in legs])
    net.db.delete_router(name)
    async with net.lock:
        await net.call(remove, net.db.records(f"router:{name}"))
        net.db.drop_records(f"router:{name}")
    return removed


async def attach_network(net: Networks, name: str, network: str) -> dict[str, Any]:
    """Give router ``name`` a leg on ``network``, with the network's gateway address.

    :raises InvalidSpec: the network is isolated, or has a router already.
    :raises NotFound: no such router or network.
    """
    require_root(f"attach router '{name}'")
    if overlaynets.cluster_network(net, network) is not None:
        net.router(name)
        await overlaynets.carry(net, network)  # its leg is on this host's bridge
    plan, row = net.router(name), net.network(network)
    if row.isolated:
        raise InvalidSpec("network", f"network '{network}' is isolated: no router may join it")
    leg = plan_leg(plan, row.plan, legs=net.db.legs.values(), taken=net.taken())
    net.db.add_leg(leg)
    try:
        async with net.lock:
            made = await net.call(attach, net.host, plan, leg, row.plan)
            net.db.set_records(f"router:{name}/{network}", made.records)
    except BaseException:
        net.db.delete_leg(network)
        raise
    return view(net, name)


async def detach_network(net: Networks, name: str, network: str) -> dict[str, Any]:
    """Take router ``name``'s leg off ``network``.

    :raises InUse: forwards go to VMs on that network.
    :raises NotFound: no such router, or it is not attached to the network.
    """
    net.router(name)
    leg = net.db.legs.get(network)
    if leg is None or leg.router != name:
        raise NotFound(f"router '{name}' is not attached to network '{network}'")
    subnet = IPv4Network(net.network(network).plan.subnet)
    using = [f"forward {f.forward.proto}/{f.forward.host_port}"
             for f in net.db.forwards.values()
             if f.forward.router == name and IPv4Address(f.forward.ip) in subnet]
    if using:
        raise InUse("leg of router", f"{name}/{network}", "detach", using)
    net.db.delete_leg(network)
    async with net.lock:
        owner = f"router:{name}/{network}"
        await net.call(remove, net.db.records(owner))
        net.db.drop_records(owner)
    await overlaynets.release_if_unused(net, network)
    return view(net, name)


def user_forwards(net: Networks) -> dict[tuple[str, int], str]:
    """(proto, host port) -> the VM whose user-mode NIC forwards it."""
    out: dict[tuple[str, int], str] = {}
    for rec in net.rt.db.list_vms():
        for nic in rec.spec.nics:
            for rule in nic.hostfwd:
                fwd = parse_hostfwd("hostfwd", rule)
                out[(fwd.proto, fwd.host_port)] = rec.name
    return out


async def add_forward(net: Networks, name: str, proto: str, host_port: int, vm: str,
                      port: int) -> dict[str, Any]:
    """Publish ``vm``:``port`` (its address on one of the router's networks) on host port
    ``host_port`` through router ``name``'s uplink.

    :raises InvalidSpec: no uplink, a bad port or protocol, a host port forwarded already,
        or a VM with no NIC on the router's networks.
    :raises NotFound: no such router or VM.
    """
    require_root("forward a host port")
    plan = net.router(name)
    mine = {leg.network for leg in net.db.legs.values() if leg.router == name}
    remote = [p.ip for n in sorted(mine) for p in overlaynets.remote_ports(net, n)
              if p.vm == vm]  # a VM on another host, on a network that spans hosts
    rec = net.rt.get(vm) if not remote else None
    ips = [n.ip for n in rec.spec.nics if n.network in mine and n.ip] if rec else remote
    if not ips:
        raise InvalidSpec("vm", f"'{vm}' has no NIC on a network of router '{name}' "
                                f"({', '.join(sorted(mine)) or 'none attached'})")
    taken_by = user_forwards(net).get((proto, host_port))
    if taken_by is not None:
        raise InvalidSpec("host_port", f"{proto}/{host_port} is already forwarded to "
                                       f"'{taken_by}' by its user-mode NIC")
    forward = plan_forward(plan, proto, host_port, ips[0], port,
                           forwards=[f.forward for f in net.db.forwards.values()],
                           subnets=[net.network(n).plan.subnet for n in mine])
    row = ForwardRow(forward, vm)
    net.db.add_forward(row)
    try:
        async with net.lock:
            await _publish(net, plan)
    except BaseException:
        net.db.delete_forwards([(proto, host_port)])
        raise
    return forward_view(row)


async def remove_forward(net: Networks, name: str, proto: str, host_port: int) -> None:
    """:raises NotFound: router ``name`` does not forward that port."""
    plan = net.router(name)
    row = net.db.forwards.get((proto, host_port))
    if row is None or row.forward.router != name:
        raise NotFound(f"router '{name}' does not forward {proto}/{host_port}")
    net.db.delete_forwards([(proto, host_port)])
    async with net.lock:
        await _publish(net, plan)


async def _publish(net: Networks, plan: RouterPlan) -> None:
    """Make the router's (and the host's) NAT rules match its stored forwards; call it
    holding the network lock."""
    mine = [f.forward for f in net.db.forwards.values() if f.forward.router == plan.name]
    await net.call(set_forwards, net.host, plan, mine)


async def forget_vm_forwards(net: Networks, vm: str, ips: set[str] | None = None) -> None:
    """Drop the forwards to ``vm`` (only to ``ips``, if given) and republish their routers;
    call it holding the network lock."""
    gone = [key for key, f in net.db.forwards.items()
            if f.vm == vm and (ips is None or f.forward.ip in ips)]
    routers = {net.db.forwards[key].forward.router for key in gone}
    net.db.delete_forwards(gone)
    for router in sorted(routers):
        await _publish(net, net.router(router))
