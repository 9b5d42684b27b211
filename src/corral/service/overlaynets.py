"""Networks that span the hosts of a cluster: one layer-2 segment per network, made of one
bridge on each host that has a VM on it, joined by VXLAN over the hosts' underlay.

::

    host h1 (home of lan)                         host h2
    crl-br-lan ─ crl-vxlan (VNI 4096, 10.0.0.1) ══ crl-vxlan (VNI 4096, 10.0.0.2) ─ crl-br-lan
       │  └─ crl-vdlan ═ dnsmasq (corral-nlan)                                  └─ crl-tb.0
       └─ crl-ta.0 (VM a)                                                          (VM b)

* **Create** (on any host; that host becomes the network's *home*): the network's row goes
  into the cluster's tables (:mod:`corral.store.clusternets`) with the lowest free VNI, then
  the home makes its bridge, its VXLAN port and the one dnsmasq of the network. Guests are
  told MTU 1450 (the underlay's 1500 less VXLAN's 50 bytes) by DHCP option 26.
* **Addresses** are planned cluster-wide (:func:`reserve`): a NIC's address and MAC belong
  to the VM's NIC, wherever its QEMU runs, so a VM that starts on another host (a move, a
  migration) keeps them. The home's dnsmasq serves every reservation of the network: it
  rewrites its hosts file when they change (seen on each heartbeat).
* **Carrying**: a host carries a network while it is its home, or has a VM with a NIC on it
  or a router leg on it (:func:`carry`, called before a VM's taps are made; the migration's
  target calls it too). It then has a local copy of the network's row (without DHCP unless
  it is the home), whose parts (bridge, VXLAN port, nft tables) are recorded and reconciled
  like any network's, and a row in ``net_hosts`` with its underlay address. Each heartbeat
  sets every VXLAN port's flood list to the other carriers (:func:`sync`). When its last
  user goes, a host other than the home removes its parts (:func:`release_if_unused`).
* **Remove**: refused while any host has a VM on the network (naming the VMs and their
  hosts); otherwise the cluster row goes, the host that was asked removes its parts at
  once, and every other carrier (the home with its dnsmasq) within a heartbeat.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Any

from corral.domain.specs import NicSpec, check_name
from corral.errors import AlreadyExists, CorralError, InUse, InvalidSpec, NotFound
from corral.host.network import Port, ensure_network, names, overlay, plan_network, remove
from corral.service import access
from corral.service.netoverlay import Overlay
from corral.service.netstate import reap_dnsmasq_zombies, require_root
from corral.store.clusternets import ClusterNetwork
from corral.store.networks import NetworkRow

if TYPE_CHECKING:
    from corral.service.netstate import Networks

log = logging.getLogger(__name__)
MTU = 1500 - overlay.OVERHEAD
PLAN_TRIES = 5  # another host may take the address planned; plan again
ORPHAN_AFTER = 120.0  # seconds: a reservation whose VM no host has (a define that failed)


def cluster_network(net: Networks, name: str) -> ClusterNetwork | None:
    """The cluster's network ``name`` (None on one host, or when there is none)."""
    return net.overlay.networks.get(name) if net.overlay is not None else None


def _need(net: Networks) -> Overlay:
    ov = net.overlay
    if ov is None:
        raise CorralError("this daemon is not in a cluster")
    if ov.underlay is None:
        raise CorralError(f"host {ov.host} has no IPv4 underlay address for VXLAN: start its "
                          "daemon with --address HOST:PORT (cluster.address)")
    return ov


# -- create and remove -------------------------------------------------------------------------

async def create(net: Networks, name: str, subnet: str, dhcp: bool = True,
                 isolated: bool = False) -> ClusterNetwork:
    """Make network ``name`` for the whole cluster, with this host as its home.

    :raises InvalidSpec: a bad name, or a subnet that is malformed, too small or overlaps
        another network's (of any host).
    :raises AlreadyExists: the name is taken in the cluster.
    :raises CorralError: this host's part could not be made (the network is gone again).
    """
    check_name(name)
    require_root(f"create network '{name}'")
    ov = _need(net)
    await net.call(ov.refresh)
    if name in net.db.networks or name in ov.networks:
        raise AlreadyExists(f"a network named '{name}' exists")
    existing = {f"network '{n}'": r.plan.network for n, r in net.db.networks.items()}
    existing |= {f"network '{n}'": r.plan.network for n, r in ov.networks.items()}
    taken = net.taken()
    plan = plan_network(name, subnet, existing=existing, taken=taken, dhcp=dhcp)
    plan = replace(plan, mtu=MTU, vxlan=names.make("vxlan", name, taken=taken))
    plan = await net.call(ov.store.add_network, plan, ov.host, isolated,
                          access.project_for_new())
    try:
        await carry(net, name)
    except BaseException:
        await net.call(ov.store.delete_network, name)
        await net.call(ov.refresh)
        raise
    return ov.networks[name]


async def remove_network(net: Networks, name: str) -> None:
    """Remove cluster network ``name`` everywhere: here at once, on its other hosts (the
    home's DHCP with them) within a heartbeat.

    :raises InUse: VMs on any host have NICs on it, or a router here has a leg on it.
    :raises NotFound: no such network.
    """
    ov = _need(net)
    await net.call(ov.refresh)
    cn = ov.networks.get(name)
    if cn is None or not access.visible(cn.project):
        raise NotFound(f"no network named '{name}'; see 'corral network list'")
    if name in net.db.legs:
        raise InUse("network", name, "remove", [f"router {net.db.legs[name].router}"])
    await net.call(ov.store.delete_network, name)
    if name in net.db.networks:
        await _drop_local(net, name)
    await net.call(ov.refresh)


# -- carrying ----------------------------------------------------------------------------------

async def carry(net: Networks, name: str) -> None:
    """Make sure this host carries cluster network ``name``: its local row, bridge, VXLAN
    port (and DHCP on the home), its row among the network's hosts, and the flood list.
    Call it before plugging a NIC on the network here: a VM that starts (or arrives by
    migration) on this host.

    :raises NotFound: the cluster has no such network.
    :raises CorralError: a part could not be made (none of them is left then).
    """
    ov = _need(net)
    cn = ov.networks.get(name)
    if cn is None:
        await net.call(ov.refresh)
        cn = ov.networks.get(name)
    if cn is None:
        raise NotFound(f"no network named '{name}' in the cluster")
    async with net.lock:
        added = name not in net.db.networks
        if added:
            plan = cn.plan if cn.home == ov.host else replace(cn.plan, dhcp=False)
            net.db.add_network(NetworkRow(plan, cn.isolated, "accept", cn.created_at),
                               cn.project)
        try:
            if added or not net.db.records(f"network:{name}"):
                made = await net.call(ensure_network, net.host, net.db.networks[name].plan,
                                      net.ports(name), net.firewall(name))
                net.db.set_records(f"network:{name}", made.records)
                reap_dnsmasq_zombies()
            if ov.host not in ov.carriers.get(name, {}):
                await net.call(ov.store.carry, name, ov.host, str(ov.underlay))
        except BaseException:
            if added:
                await net.call(remove, net.db.records(f"network:{name}"))
                net.db.drop_records(f"network:{name}")
                net.db.delete_network(name)
            raise
    await net.call(ov.refresh)
    await _set_peers(net, name)


async def release_if_unused(net: Networks, name: str) -> None:
    """Remove this host's parts of cluster network ``name`` if nothing here uses it any
    more (no VM with a NIC on it, no router leg) and this is not its home."""
    ov = net.overlay
    row = net.db.networks.get(name)
    if ov is None or row is None or row.plan.vni is None:
        return
    cn = ov.networks.get(name)
    if cn is not None and cn.home == ov.host:
        return
    used = name in net.db.legs or any(n.network == name for r in net.rt.db.list_vms()
                                      for n in r.spec.nics)
    if not used:
        await _drop_local(net, name)


async def _drop_local(net: Networks, name: str) -> None:
    """Remove this host's parts and local row of cluster network ``name``."""
    ov = net.overlay
    async with net.lock:
        if name in net.db.networks:
            net.db.delete_network(name)
        await net.call(remove, net.db.records(f"network:{name}"))
        net.db.drop_records(f"network:{name}")
        if ov is not None:
            await net.call(ov.store.drop, name, ov.host)
    log.info("network %s: this host no longer carries it", name)


async def _set_peers(net: Networks, name: str) -> None:
    ov, row = net.overlay, net.db.networks.get(name)
    if ov is None or row is None or not row.plan.vxlan:
        return
    others = [IPv4Address(a) for h, a in ov.carriers.get(name, {}).items() if h != ov.host]
    await net.call(overlay.set_peers, row.plan.vxlan, others, net.host.netns)


async def sync(net: Networks) -> None:
    """(Each heartbeat) follow the cluster: remove the networks removed elsewhere, set the
    flood lists to the carriers of now, give the home's dnsmasq the reservations of now."""
    ov = net.overlay
    if ov is None:
        return
    async with ov.syncing:  # the heartbeat's and a notification's, one after the other
        await _sync(net, ov)


async def _sync(net: Networks, ov: Overlay) -> None:
    await net.call(ov.refresh)
    for name, row in list(net.db.networks.items()):
        if row.plan.vni is None:
            continue
        cn = ov.networks.get(name)
        if cn is None or cn.vni != row.plan.vni:
            await _drop_local(net, name)
            continue
        if ov.host not in ov.carriers.get(name, {}):
            await net.call(ov.store.carry, name, ov.host, str(ov.underlay))
        await _set_peers(net, name)
        if cn.home == ov.host:
            await net.call(ov.store.sweep, name, ORPHAN_AFTER)
            ports = tuple(net.ports(name))
            if ov.served.get(name) != ports:
                async with net.lock:
                    await net.apply(name)
                ov.served[name] = ports
    for name, cn in ov.networks.items():
        if cn.home == ov.host and name not in net.db.networks:
            await carry(net, name)  # a home that stopped between the row and its parts


# -- addresses ---------------------------------------------------------------------------------

def refresh_ports(net: Networks, network: str) -> None:
    """Read the cluster's reservations again (synchronously: a plan follows at once), and
    its networks too when ``network`` is new to this host."""
    ov = net.overlay
    if ov is None:
        return
    if network in ov.networks or network in net.db.networks:
        ov.reservations = ov.store.ports()
    else:
        ov.refresh()


def reserve(net: Networks, port: Port) -> bool:
    """Hold ``port``'s address for its VM's NIC in the whole cluster; False when another
    host took it meanwhile (plan again)."""
    assert net.overlay is not None
    return net.overlay.store.reserve(port, net.overlay.host)


def held(net: Networks, network: str, vm: str, mac: str) -> str | None:
    """The address the cluster holds for ``vm``'s NIC ``mac`` on ``network``: planned again
    (the VM defined on another host, a migration's target), the NIC keeps it."""
    if net.overlay is None:
        return None
    return next((r.port.ip for r in net.overlay.ports(network)
                 if r.port.vm == vm and r.port.mac == mac), None)


def remote_ports(net: Networks, network: str) -> list[Port]:
    """The ports of ``network`` whose VMs are on other hosts."""
    return net.remote_ports(network)


def cluster_port(vm: str, nic: NicSpec, nics: list[NicSpec]) -> Port:
    """The port of a planned NIC, named in DNS when it is its VM's first on the network."""
    assert nic.network and nic.ifname and nic.ip
    first = next(n for n in nics if n.network == nic.network and n.ifname)
    return Port(nic.network, vm, nic.ifname, nic.mac, nic.ip, vm if first is nic else None)


async def plugging(net: Networks, vm: str, nics: list[NicSpec]) -> None:
    """Before a VM's taps are made here: carry its cluster networks, and note that its NICs
    (their addresses kept) are on this host now."""
    ov = net.overlay
    if ov is None:
        return
    wanted = {str(n.network) for n in nics if n.mode == "network"}
    if wanted - set(net.db.networks) - set(ov.networks):
        await net.call(ov.refresh)  # made on another host since the last heartbeat
    mine = sorted(n for n in wanted if n in ov.networks)
    if not mine:
        return
    for name in mine:
        await carry(net, name)
    for nic in nics:
        if nic.network in mine and nic.ifname and nic.ip:
            port = cluster_port(vm, nic, nics)
            if not await net.call(reserve, net, port):
                raise InvalidSpec("nics", f"{nic.ip} of {vm} is taken on network "
                                          f"'{nic.network}' by another VM of the cluster")


async def forgetting(net: Networks, vm: str, networks: list[str],
                     macs: list[str] | None = None) -> None:
    """After VM ``vm`` is destroyed here (or its NICs ``macs`` detached): give back its
    addresses unless the VM lives on another host now, and remove what no longer serves."""
    ov = net.overlay
    if ov is None:
        return
    owner = await net.call(ov.store.owner, vm)
    if owner is None or owner == ov.host or macs is not None:
        await net.call(ov.store.release, vm, macs)
    await net.call(ov.refresh)
    for name in networks:
        await release_if_unused(net, name)


# -- views -------------------------------------------------------------------------------------

def describe(net: Networks, name: str) -> dict[str, Any]:
    """What a view of cluster network ``name`` adds: VNI, home, the hosts that carry it."""
    cn = cluster_network(net, name)
    if cn is None:
        return {}
    assert net.overlay is not None
    return {"vni": cn.vni, "home": cn.home, "mtu": cn.plan.mtu, "dhcp": cn.plan.dhcp,
            "dhcp_server": cn.plan.dhcp_server if cn.plan.dhcp else None,
            "hosts": sorted(net.overlay.carriers.get(name, {}))}


def host_of(net: Networks, vm: str) -> str | None:
    """Where ``vm``'s NICs are, as the cluster's reservations say."""
    if net.overlay is None:
        return None
    here = net.rt.db.get_vm(vm)
    if here is not None:
        return net.overlay.host
    return next((r.host for r in net.overlay.reservations if r.port.vm == vm), None)


def elsewhere(net: Networks) -> dict[str, ClusterNetwork]:
    """The cluster networks this host does not carry (shown in lists all the same)."""
    if net.overlay is None:
        return {}
    return {n: cn for n, cn in net.overlay.networks.items()
            if n not in net.db.networks and access.in_scope(cn.project)}


def view_elsewhere(net: Networks, name: str) -> dict[str, Any]:
    """A cluster network this host does not carry, as the cluster's tables say."""
    cn = cluster_network(net, name)
    assert cn is not None and net.overlay is not None
    plan = cn.plan
    return {"name": name, "subnet": plan.subnet, "gateway": plan.gateway, "dhcp": plan.dhcp,
            "dhcp_server": plan.dhcp_server if plan.dhcp else None,
            "pool": f"{plan.pool_start}-{plan.pool_end}", "isolated": cn.isolated,
            "bridge": plan.bridge, "router": None, "policy": "accept", "rules": [],
            "ports": [{"vm": r.port.vm, "nic": None, "mac": r.port.mac, "ip": r.port.ip,
                       "tap": r.port.ifname, "host": r.host,
                       "dns": f"{r.port.hostname}.corral" if r.port.hostname else None}
                      for r in net.overlay.ports(name)],
            "created_at": cn.created_at, **describe(net, name)}


def hosts(net: Networks) -> list[dict[str, Any]]:
    """The hosts the cluster's networks know: the carriers (with their underlay address),
    the hosts of their VMs, and this one."""
    ov = net.overlay
    if ov is None:
        return []
    found = {ov.host: str(ov.underlay) if ov.underlay else None}
    for carriers in ov.carriers.values():
        found |= carriers
    for r in ov.reservations:
        found.setdefault(r.host, None)
    return [{"name": h, "underlay": a, "self": h == ov.host} for h, a in sorted(found.items())]
