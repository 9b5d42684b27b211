"""A VM's NICs: planned when the VM is defined, wired to the host just before its QEMU starts
and unwired when it ends, hot-plugged into and out of running q35 VMs.

A *network* NIC is a port on a Corral network: its address (a DHCP reservation bound to its
MAC, fixed when the user chose it), its MAC and its tap's name are planned once, when the VM
is defined (:func:`plan_nics`), and kept in the VM's spec with the VM's name
(``planned_for``), so they are the same on every start. A copy of the spec made for another
VM (a clone, an import under a new name) is planned again when that VM first starts. The tap
exists only while QEMU runs: :func:`plug` makes it just before QEMU starts (QEMU opens it by
name) and :func:`unplug` removes it when QEMU ends, both recorded under ``vm:NAME``.

A *user* NIC is QEMU's user-mode networking, with host port forwards (``hostfwd``): no host
object at all, so it is what a daemon without root offers.

Hot-plug (:func:`attach`, :func:`detach`) is ``netdev_add`` + ``device_add`` behind one of the
empty PCIe root ports every q35 VM has (shared with hot-plugged disks), and ``device_del``,
the wait for the guest to let go (``DEVICE_DELETED``), then ``netdev_del``. The tiny guest
runs a DHCP client on every NIC it sees appear (its ``/sbin/hotplug``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from corral.domain.nics import parse_hostfwd
from corral.domain.specs import NicSpec, VMSpec, new_mac
from corral.domain.states import LIVE, State
from corral.errors import (
    CorralError,
    InUse,
    InvalidSpec,
    InvalidState,
    NotFound,
)
from corral.host.network import Port, Record, ensure_tap, leases, plan_port, remove
from corral.service import access, disks, overlaynets, routers
from corral.service.netstate import require_root, tap_counters

if TYPE_CHECKING:
    from corral.engine.driver import GuestInterface
    from corral.service.netstate import Networks
    from corral.store.db import VMRecord

log = logging.getLogger(__name__)


def _port(vm: str, nic: NicSpec) -> Port:
    assert nic.network and nic.ifname and nic.ip
    return Port(nic.network, vm, nic.ifname, nic.mac, nic.ip, None)


def _index(nic: NicSpec, position: int) -> int:
    """The number in the NIC's device id: the key of its tap's name."""
    return int(nic.device(position).removeprefix("nic"))


def _plan(net: Networks, vm: str, position: int, nic: NicSpec, siblings: list[NicSpec],
          field: str) -> None:
    """Plan ``nic`` (of ``vm``, whose NICs are ``siblings``) on its network, in place."""
    require_root(f"put VM '{vm}' on network '{nic.network}'")
    name = str(nic.network)
    overlaynets.refresh_ports(net, name)
    spans = overlaynets.cluster_network(net, name)
    row = net.db.networks.get(name)
    plan = row.plan if row is not None else spans.plan if spans is not None else None
    project = spans.project if spans is not None else net.db.project_of("network", name)
    if plan is None or not access.visible(project):
        raise InvalidSpec(f"{field}.network", f"no network named '{nic.network}'; see "
                                              "'corral network list'")
    own = [n for n in siblings if n is not nic and n.planned_for == vm and n.ifname]
    for _ in range(overlaynets.PLAN_TRIES if spans is not None else 1):
        ports = [p for p in net.ports(name) if p.vm != vm]
        ports += [_port(vm, n) for n in own if n.network == nic.network]
        others = [n.mac for r in net.rt.db.list_vms() if r.name != vm for n in r.spec.nics]
        others += [p.mac for p in overlaynets.remote_ports(net, name) if p.vm != vm]
        try:
            port = plan_port(plan, vm, _index(nic, position), ports=ports,
                             taken=net.taken() | {str(n.ifname) for n in own},
                             macs={*others, *(n.mac for n in siblings if n is not nic)},
                             mac=nic.mac, ip=nic.ip if nic.fixed_ip else
                             overlaynets.held(net, name, vm, nic.mac))
        except InvalidSpec as err:
            raise InvalidSpec(f"{field}.{err.field}", err.message.partition(": ")[2]) from err
        if spans is None or overlaynets.reserve(net, port):
            break
        overlaynets.refresh_ports(net, name)  # another host took it first: plan again
    else:
        raise InvalidSpec(f"{field}.ip", f"no address could be held on network '{name}' "
                                         "(other hosts took each one planned); try again")
    nic.ip, nic.mac, nic.ifname, nic.planned_for = port.ip, port.mac, port.ifname, vm


def plan_nics(net: Networks, spec: VMSpec) -> None:
    """Plan the network NICs of a VM about to be defined, and check its user-mode forwards
    against every forwarded host port. Nothing is made: the taps come with the first start.

    :raises InvalidSpec: (naming the NIC's field) no such network, a fixed address or MAC
        that is taken or outside the network, a host port forwarded already.
    :raises NeedsRoot: a network NIC asked of a daemon that does not run as root.
    """
    forwarded = {key: f"'{vm}'" for key, vm in routers.user_forwards(net).items()}
    forwarded |= {key: f"router {row.forward.router}"
                  for key, row in net.db.forwards.items()}
    for i, nic in enumerate(spec.nics):
        rules = [parse_hostfwd(f"nics.{i}.hostfwd", rule) for rule in nic.hostfwd]
        for rule in rules:
            key = (rule.proto, rule.host_port)
            if key in forwarded:
                raise InvalidSpec(f"nics.{i}.hostfwd", f"{rule.proto}/{rule.host_port} is "
                                                       f"already forwarded to {forwarded[key]}")
            forwarded[key] = f"'{spec.name}'"
        nic.hostfwd = [rule.qemu() for rule in rules]
        if nic.mode == "network":
            _plan(net, spec.name, i, nic, spec.nics, f"nics.{i}")


def _stale(net: Networks, rec: VMRecord, nic: NicSpec) -> bool:
    """Whether ``nic`` must be planned again: a copy of another VM's, or clashing with a NIC
    of another VM (an import beside the original)."""
    if nic.planned_for != rec.name or not nic.ifname:
        return True
    return any(n.ifname == nic.ifname or n.mac == nic.mac
               or (n.network == nic.network and n.ip == nic.ip)
               for r in net.rt.db.list_vms() if r.name != rec.name for n in r.spec.nics)


async def plug(net: Networks, rec: VMRecord) -> None:
    """Before QEMU starts: plan the NICs copied from another VM, make a tap for each network
    NIC and bring its networks' DHCP entries and anti-spoofing up to date.

    :raises NeedsRoot: the VM has network NICs and the daemon does not run as root.
    :raises InvalidSpec: a copied NIC's fixed address is taken.
    :raises CorralError: a tap cannot be made (none of them is left then).
    """
    nics = [(i, n) for i, n in enumerate(rec.spec.nics) if n.mode == "network"]
    if not nics:
        return
    require_root(f"start VM '{rec.name}' with NICs on networks")
    stale = [i for i, n in nics if _stale(net, rec, n)]
    others = {n.mac for r in net.rt.db.list_vms() if r.name != rec.name for n in r.spec.nics}
    for i in stale:
        if rec.spec.nics[i].mac in others:  # an import beside its original: its own MAC
            rec.spec.nics[i].mac = new_mac()
        _plan(net, rec.name, i, rec.spec.nics[i], rec.spec.nics, f"nics.{i}")
    if stale:
        net.rt.db.update_vm(rec, "nics_planned", {"nics": [rec.spec.nics[i].device(i)
                                                       for i in stale]})
    await overlaynets.plugging(net, rec.name, rec.spec.nics)
    async with net.lock:
        made: list[Record] = []
        try:
            for _, nic in nics:
                plan = net.network(str(nic.network)).plan
                made += (await net.call(ensure_tap, net.host, plan, _port(rec.name, nic))
                         ).records
            net.db.set_records(f"vm:{rec.name}", made)
            for network in sorted({str(n.network) for _, n in nics}):
                await net.apply(network)
        except BaseException:
            await net.call(remove, made)
            net.db.drop_records(f"vm:{rec.name}")
            raise


def unplug(net: Networks, name: str) -> None:
    """Remove the taps of VM ``name`` (its QEMU has ended); a failure is logged."""
    records = net.db.records(f"vm:{name}")
    if not records:
        return
    try:
        remove(records)
    except CorralError as err:
        log.warning("could not remove the taps of %s: %s", name, err)
        return
    net.db.drop_records(f"vm:{name}")


def renamed(net: Networks, old: str, new: str) -> list[str]:
    """VM ``old`` is ``new`` now (:mod:`.renaming`: the store moved its taps' records with
    it): the cache follows. The networks whose DHCP and DNS entries must take the new name
    (:func:`rename_in_dns`)."""
    net.db.owner_renamed(f"vm:{old}", f"vm:{new}")
    rec = net.rt.db.get_vm(new)
    return sorted({str(n.network) for n in (rec.spec.nics if rec else [])
                   if n.network and n.planned_for == new and n.network in net.db.networks})


async def rename_in_dns(net: Networks, networks: list[str]) -> None:
    """Bring ``networks``' DHCP and DNS entries in line with their VMs' names (a failure is
    logged: the VM works on, under its old name in DNS)."""
    try:
        async with net.lock:
            for network in networks:
                if network in net.db.networks:
                    await net.apply(network)
    except CorralError as err:
        log.warning("could not give %s the new names: %s", ", ".join(networks), err)


async def forget(net: Networks, name: str, spec: VMSpec) -> None:
    """After VM ``name`` is destroyed: remove its taps, its DHCP entries and anti-spoofing
    rules, the forwards to it and the firewall rules for it (a failure is logged: the VM is
    gone either way)."""
    networks = sorted({str(n.network) for n in spec.nics
                       if n.network and n.planned_for == name and n.network in net.db.networks})
    rules = [r.id for r in net.db.rules.values() if r.rule.vm == name]
    forwards = [f for f in net.db.forwards.values() if f.vm == name]
    spans = sorted({str(n.network) for n in spec.nics
                    if n.network and overlaynets.cluster_network(net, n.network)})
    if not (networks or rules or forwards or spans or net.db.records(f"vm:{name}")):
        return
    unplug(net, name)
    net.db.delete_rules(rules)
    try:
        async with net.lock:
            await routers.forget_vm_forwards(net, name)
            for network in networks:
                await net.apply(network)
        await overlaynets.forgetting(net, name, spans)
    except CorralError as err:
        log.warning("could not take %s off its networks: %s", name, err)


async def moved(net: Networks, name: str, spec: VMSpec) -> None:
    """After VM ``name`` was live-migrated to another host: its taps go, and this host stops
    carrying the cluster networks no VM here uses any more. Its address stays (the cluster
    holds it for the VM, wherever it runs), and so do the forwards and rules that name it:
    they reach it over the overlay."""
    unplug(net, name)
    spans = sorted({str(n.network) for n in spec.nics
                    if n.network and overlaynets.cluster_network(net, n.network)})
    try:
        await overlaynets.forgetting(net, name, spans)
    except CorralError as err:
        log.warning("could not take %s's networks off this host: %s", name, err)


# -- hot-plug ----------------------------------------------------------------------------------

async def attach(net: Networks, vm: str, network: str, mac: str | None = None,
                 ip: str | None = None) -> dict[str, Any]:
    """Give ``vm`` a NIC on ``network``; a running q35 VM gets it at once (hot-plug).

    :raises InvalidSpec: no such network, a bad or taken address or MAC.
    :raises InvalidState: the VM cannot take a NIC now (a running microvm, say).
    :raises NeedsRoot: the daemon does not run as root.
    """
    async with net.rt.lock(vm):
        rec = net.rt.get(vm)
        live = disks.check_pluggable(rec, "NIC")
        used = {n.device(i) for i, n in enumerate(rec.spec.nics)}
        device = next(f"nic{k}" for k in range(len(used) + 1) if f"nic{k}" not in used)
        nic = NicSpec(mode="network", mac=(mac or new_mac()).lower(), network=network, ip=ip,
                      fixed_ip=ip is not None, id=device,
                      port=disks._free_port(rec) if rec.spec.machine == "q35" else None)
        _plan(net, vm, len(rec.spec.nics), nic, rec.spec.nics, "nic")
        rec.spec.nics.append(nic)
        try:
            if live:
                await overlaynets.plugging(net, vm, rec.spec.nics)
            async with net.lock:
                if live:
                    made = await net.call(ensure_tap, net.host, net.network(network).plan,
                                          _port(vm, nic))
                    net.db.add_records(f"vm:{vm}", made.records)
                await net.apply(network)
            if live:
                await _hotplug(net, rec, nic)
        except BaseException:
            rec.spec.nics.remove(nic)
            await _unwire(net, vm, nic)
            raise
        net.rt.db.update_vm(rec, "nic_attached", {"nic": device, "network": network})
        return net.rt.view(rec)


async def _hotplug(net: Networks, rec: VMRecord, nic: NicSpec) -> None:
    await net.rt.machine(rec).machine.add_nic(nic, rec.spec.nics.index(nic))


async def _unwire(net: Networks, vm: str, nic: NicSpec) -> None:
    """Take a NIC's tap and reservation off its network (the NIC is out of the spec)."""
    async with net.lock:
        await net.call(remove, [r for r in net.db.records(f"vm:{vm}") if r.name == nic.ifname])
        net.db.drop_records(f"vm:{vm}", [str(nic.ifname)])
        if nic.network in net.db.networks:
            await net.apply(str(nic.network))
    if overlaynets.cluster_network(net, str(nic.network)):
        await overlaynets.forgetting(net, vm, [str(nic.network)], [nic.mac])


def _find(rec: VMRecord, ref: str) -> int:
    for i, nic in enumerate(rec.spec.nics):
        if ref.lower() in (nic.device(i), nic.mac, nic.ifname):
            return i
    raise NotFound(f"'{rec.name}' has no NIC '{ref}'; see 'corral show {rec.name}'")


async def detach(net: Networks, vm: str, ref: str, timeout: float = 30.0) -> dict[str, Any]:
    """Take NIC ``ref`` (its id such as ``nic1``, or its MAC) off ``vm``; a running guest is
    asked to let go of it first.

    :raises InUse: forwards go to its address.
    :raises InvalidState: a running VM's NIC that was there at boot (it sits on the root
        bus, which has no hot-plug).
    :raises Timeout: the guest did not release it in time (it stays attached).
    """
    async with net.rt.lock(vm):
        rec = net.rt.get(vm)
        index = _find(rec, ref)
        nic = rec.spec.nics[index]
        using = [f"forward {key[0]}/{key[1]} of router {f.forward.router}"
                 for key, f in net.db.forwards.items()
                 if f.vm == vm and f.forward.ip == nic.ip]
        if using:
            raise InUse("NIC", f"{vm}/{nic.device(index)}", "detach", using)
        live = rec.state in LIVE
        if rec.state == State.PAUSED:
            raise InvalidState(vm, f"detach {nic.device(index)} from", "paused", [],
                               because=disks.UNPLUG_PAUSED)
        if live and nic.port is None:
            raise InvalidState(vm, f"hot-unplug {nic.device(index)} of", "running",
                               ["stopped (NICs present at boot cannot be hot-unplugged)"])
        for i, other in enumerate(rec.spec.nics):  # ids stay as QEMU knows them
            other.id = other.device(i)
        if live:
            await net.rt.machine(rec).machine.remove_nic(nic, index, timeout)
        rec.spec.nics.pop(index)
        net.rt.db.update_vm(rec, "nic_detached", {"nic": nic.device(index)})
        if nic.mode == "network":
            await _unwire(net, vm, nic)
        return net.rt.view(rec)


# -- what a NIC carries now --------------------------------------------------------------------

async def live(net: Networks, name: str, view: dict[str, Any]) -> None:
    """Add to each NIC of ``view`` what it carries now: the address of its DHCP lease and its
    counters (from its tap; for user-mode NICs from the guest agent), and the addresses the
    guest agent reports for it."""
    live = net.rt.live.get(name)
    guest: dict[str, GuestInterface] = {}
    running = net.rt.get(name).state == State.RUNNING  # a paused guest's agent cannot answer
    if live is not None and live.machine.has_agent and live.ready.is_set() and running:
        try:
            for iface in await live.machine.guest_interfaces(timeout=2):
                guest[(iface.mac or "").lower()] = iface
        except (CorralError, OSError):  # the machine may be ending under us
            guest = {}
    leased: dict[str, dict[str, str]] = {}
    for nic_view in view["nics"]:
        found = guest.get(nic_view["mac"])
        nic_view["guest_addresses"] = [f"{a}/{p}" for a, p, _ in found.addresses] \
            if found else []
        nic_view["guest_interface"] = found.name if found else None
        nic_view["counters"] = dict(found.counters) if found and found.counters else None
        network = nic_view.get("network")
        if network in net.db.networks and nic_view.get("ifname"):
            if network not in leased:
                leased[network] = await net.call(leases, net.host, net.network(network).plan)
            nic_view["lease"] = leased[network].get(nic_view["mac"])
            nic_view["counters"] = await net.call(tap_counters, nic_view["ifname"])
