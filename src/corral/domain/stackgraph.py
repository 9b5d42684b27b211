"""A stack's resources as a graph: the file expanded into one resource per object Corral
makes (``count`` copies, router forwards, firewall rules), every reference checked, and the
order they depend on each other. Pure: what the daemon already has comes in as
:class:`Existing`.

Resources are named ``KIND/NAME``: ``network/lan``, ``router/gw``, ``disk/data``,
``vm/web``, ``snapshot/tmpl:ready``, ``forward/gw:tcp:8080``, ``rule/web:tcp/80:0.0.0.0/0``.
A reference names a resource of the stack or, when the stack has none of that name, one the
daemon already has (a network, a VM, a snapshot made elsewhere); otherwise it is refused
with its line, like a cycle, a duplicate name or an address outside its subnet.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Any

from corral.domain.nics import check_nic
from corral.domain.sizes import parse_size
from corral.domain.specs import NAME_RE
from corral.domain.stackfile import Loaded, Path, VMDef
from corral.domain.subnets import parse_subnet
from corral.errors import InvalidSpec, not_a_name

KINDS = ("network", "disk", "router", "vm", "snapshot", "forward", "rule")
#: what a warm start takes from its snapshot, so a VM from_snapshot may not give it
WARM_GIVES = frozenset({"image", "cpus", "memory", "machine", "arch", "cmdline", "user_data",
                        "hostname", "disks", "nics"})


class Existing:
    """What the daemon has now, by kind: names (``snapshot``: ``VM:NAME``; ``forward``:
    ``ROUTER:PROTO:PORT``; ``rule``: the rule's stack name)."""

    def __init__(self, names: dict[str, set[str]] | None = None,
                 vm_states: dict[str, str] | None = None) -> None:
        self.names: dict[str, set[str]] = {kind: set() for kind in KINDS} | (names or {})
        self.vm_states = vm_states or {}  # VM name -> its state now

    def has(self, rid: str) -> bool:
        kind, _, name = rid.partition("/")
        return name in self.names.get(kind, set())


class Resource:
    """One object of the stack: its spec (what is compared between applies) and what it
    needs made first."""

    def __init__(self, kind: str, name: str, spec: dict[str, Any], path: Path,
                 deps: set[str] | None = None) -> None:
        self.kind = kind
        self.name = name
        self.spec = spec
        self.path = path
        self.deps = deps or set()

    @property
    def id(self) -> str:
        return f"{self.kind}/{self.name}"


def human_size(n: int) -> str:
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


class _Builder:
    def __init__(self, loaded: Loaded, existing: Existing) -> None:
        self.f = loaded
        self.existing = existing
        self.out: dict[str, Resource] = {}

    def add(self, res: Resource) -> None:
        if res.id in self.out:
            raise self.f.error(res.path, f"{res.kind} '{res.name}' is named twice (first on "
                                         f"line {self.f.line(self.out[res.id].path)})")
        self.out[res.id] = res

    def ref(self, kind: str, name: str, path: Path, declared: set[str]) -> set[str]:
        """The dependency on ``kind/name`` when the stack declares it; nothing when the
        daemon has it already.

        :raises InvalidSpec: neither has it.
        """
        if name in declared:
            return {f"{kind}/{name}"}
        if name in self.existing.names[kind]:
            return set()
        raise self.f.error(path, f"no {kind} '{name}' in the stack or the daemon")

    def name(self, name: str, path: Path) -> str:
        if not NAME_RE.match(name):
            raise self.f.error(path, not_a_name(name))
        return name


def build(loaded: Loaded, existing: Existing) -> dict[str, Resource]:
    """Every resource of the stack file, its references checked, in dependency order.

    :raises InvalidSpec: a bad name or value, a missing reference, a duplicate, an address
        outside its subnet, or a cycle (each with its line).
    """
    b = _Builder(loaded, existing)
    st = loaded.stack
    subnets: dict[str, IPv4Network] = {}
    for name, net in st.networks.items():
        path: Path = ("networks", name)
        try:  # as creating the network checks it: an apply would stop half-way on it
            subnets[name] = parse_subnet(net.subnet)
        except InvalidSpec as err:
            raise loaded.error((*path, "subnet"), err.message.partition(": ")[2]) from err
        b.add(Resource("network", b.name(name, path), {
            "subnet": str(subnets[name]), "dhcp": net.dhcp, "isolated": net.isolated}, path))
    for name, disk in st.disks.items():
        path = ("disks", name)
        size = _size(loaded, (*path, "size"), disk.size)
        b.add(Resource("disk", b.name(name, path), {"size": human_size(size),
                                                    "format": disk.format}, path))
    _routers(b, set(st.networks))
    vms = _vms(b, subnets)
    _snapshots(b, vms)
    _forwards(b, vms)
    _rules(b, vms)
    return order(loaded, b.out)


def _size(loaded: Loaded, path: Path, value: str | int) -> int:
    try:
        return parse_size(str(path[-1]), value)
    except InvalidSpec as err:
        raise loaded.error(path, err.message.partition(": ")[2]) from err


def _routers(b: _Builder, networks: set[str]) -> None:
    for name, router in b.f.stack.routers.items():
        path: Path = ("routers", name)
        deps: set[str] = set()
        for i, net in enumerate(router.networks):
            deps |= b.ref("network", net, (*path, "networks", i), networks)
        if len(set(router.networks)) != len(router.networks):
            raise b.f.error((*path, "networks"), "a network is listed twice")
        b.add(Resource("router", b.name(name, path), {
            "uplink": router.uplink, "networks": sorted(router.networks)}, path, deps))


def _vms(b: _Builder, subnets: dict[str, IPv4Network]) -> dict[str, list[str]]:
    """Add the VMs (``count`` copies each); return each VM's networks by name."""
    nets: dict[str, list[str]] = {}
    ips: dict[str, str] = {}
    for base, vm in b.f.stack.vms.items():
        path: Path = ("vms", base)
        for i in range(vm.count):
            name = b.name(base if vm.count == 1 else f"{base}-{i + 1}", path)
            res = _vm(b, name, vm, i, path, subnets, ips)
            nets[name] = [n["network"] for n in res.spec["nics"] if n.get("network")]
            b.add(res)
    return nets


def _vm(b: _Builder, name: str, vm: VMDef, index: int, path: Path,
        subnets: dict[str, IPv4Network], ips: dict[str, str]) -> Resource:
    st = b.f.stack
    deps: set[str] = set()
    nics = []
    for n, nic in enumerate(vm.nics or []):
        npath = (*path, "nics", n)
        try:
            mode = check_nic("nic", nic.mode, nic.network, nic.ip, nic.hostfwd)
        except InvalidSpec as err:
            raise b.f.error(npath, err.message) from err
        entry: dict[str, Any] = {"mode": mode}
        if nic.network:
            deps |= b.ref("network", nic.network, (*npath, "network"), set(st.networks))
            entry["network"] = nic.network
        if nic.ip:
            entry["ip"] = _address(b, nic.ip, index, nic.network, subnets, (*npath, "ip"))
            if entry["ip"] in ips:
                raise b.f.error((*npath, "ip"), f"{entry['ip']} is also {ips[entry['ip']]}'s")
            ips[entry["ip"]] = name
        if nic.hostfwd:
            entry["hostfwd"] = list(nic.hostfwd)
        nics.append(entry)
    for d, disk in enumerate(vm.disks):
        deps |= b.ref("disk", disk, (*path, "disks", d), set(st.disks))
    spec = vm.model_dump(exclude={"count", "nics", "memory"}, exclude_defaults=True)
    spec.update(nics=nics, start=vm.start)
    if vm.from_snapshot is not None:
        ignored = sorted(vm.model_fields_set & WARM_GIVES)
        if ignored:
            raise b.f.error((*path, ignored[0]), "a warm start (from_snapshot) has the "
                                                 "snapshot's hardware and disks; remove it")
        deps |= _snapshot_ref(b, vm.from_snapshot, (*path, "from_snapshot"))
        return Resource("vm", name, spec, path, deps)
    memory = _size(b.f, (*path, "memory"), vm.memory)
    spec.update(cpus=vm.cpus, memory=human_size(memory), image=vm.image or "tiny")
    return Resource("vm", name, spec, path, deps)


def _address(b: _Builder, ip: str, index: int, network: str | None,
             subnets: dict[str, IPv4Network], path: Path) -> str:
    addr = IPv4Address(ip) + index
    subnet = subnets.get(network or "")
    if subnet is not None and (addr not in subnet or addr in (subnet.network_address,
                                                              subnet.broadcast_address)):
        raise b.f.error(path, f"{addr} is not a host address of network {network}'s "
                              f"subnet {subnet}")
    return str(addr)


def _snapshot_ref(b: _Builder, source: str, path: Path) -> set[str]:
    vm, sep, snap = source.partition(":")
    if not sep or not vm or not snap:
        raise b.f.error(path, f"'{source}' is not VM:SNAPSHOT")
    declared = {f"{s.vm}:{n}" for n, s in b.f.stack.snapshots.items()}
    return b.ref("snapshot", source, path, declared)


def _snapshots(b: _Builder, vms: dict[str, list[str]]) -> None:
    for name, snap in b.f.stack.snapshots.items():
        path: Path = ("snapshots", name)
        b.name(name, path)
        deps = b.ref("vm", snap.vm, (*path, "vm"), set(vms))
        b.add(Resource("snapshot", f"{snap.vm}:{name}", {"memory": snap.memory}, path, deps))


def _forwards(b: _Builder, vms: dict[str, list[str]]) -> None:
    ports: dict[tuple[str, int], str] = {}
    for rname, router in b.f.stack.routers.items():
        for i, fwd in enumerate(router.forwards):
            path: Path = ("routers", rname, "forwards", i)
            key = (fwd.proto, fwd.host_port)
            if key in ports:
                raise b.f.error((*path, "host_port"), f"{fwd.proto}/{fwd.host_port} is "
                                                      f"already forwarded by router {ports[key]}")
            ports[key] = rname
            deps = {f"router/{rname}"} | b.ref("vm", fwd.vm, (*path, "vm"), set(vms))
            if fwd.vm in vms and not set(vms[fwd.vm]) & set(router.networks):
                raise b.f.error((*path, "vm"), f"VM {fwd.vm} has no NIC on a network of "
                                               f"router {rname}")
            b.add(Resource("forward", f"{rname}:{fwd.proto}:{fwd.host_port}",
                           {"vm": fwd.vm, "port": fwd.port}, path, deps))


def _rules(b: _Builder, vms: dict[str, list[str]]) -> None:
    nets = set(b.f.stack.networks)
    for i, rule in enumerate(b.f.stack.firewall):
        path: Path = ("firewall", i)
        kind, _, target = rule.target.rpartition(":")
        if kind not in ("", "vm", "network"):
            raise b.f.error((*path, "target"), f"'{rule.target}' is not NAME, vm:NAME or "
                                               "network:NAME")
        kind = kind or ("vm" if target in vms else "network" if target in nets else
                        "vm" if target in b.existing.names["vm"] else "network")
        deps = b.ref(kind, target, (*path, "target"), set(vms) if kind == "vm" else nets)
        b.add(Resource("rule", f"{kind}:{target}:{rule.allow}:{rule.source}",
                       {"target": f"{kind}:{target}", "allow": rule.allow,
                        "source": rule.source}, path, deps))


def order(loaded: Loaded, resources: dict[str, Resource]) -> dict[str, Resource]:
    """``resources`` with every one after what it depends on (ties in file order).

    :raises InvalidSpec: the dependencies make a cycle (named, with the line of its first
        resource).
    """
    done: dict[str, Resource] = {}
    left = dict(resources)
    while left:
        ready = [r for r in left.values() if r.deps <= done.keys()]
        if not ready:
            cycle = _cycle(left)
            first = resources[cycle[0]]
            raise loaded.error(first.path, "a cycle: " + " → ".join(cycle + cycle[:1]))
        for r in ready:
            done[r.id] = r
            del left[r.id]
    return done


def _cycle(left: dict[str, Resource]) -> list[str]:
    path: list[str] = []
    node = next(iter(left))
    while node not in path:
        path.append(node)
        node = next(d for d in sorted(left[node].deps) if d in left)
    return path[path.index(node):]
