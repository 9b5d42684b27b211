"""The cluster's side of networks that span hosts (tables in the shared ``corral_cluster``
schema, next to :mod:`corral.store.cluster`'s)::

    networks    one row per cluster network: its plan (with its VNI), its home host (the
                one that runs its DHCP/DNS), isolated, project
    net_ports   one row per NIC on a cluster network: MAC, address, tap name, DNS name, and
                the host whose QEMU has it now. The address belongs to the VM's NIC (its
                name and MAC), not to a host: a VM that starts on another host keeps it.
    net_hosts   the hosts that carry a network now (bridge + VXLAN port), with the underlay
                address their VXLAN port is bound to: the flood list of every other carrier

Addresses are planned cluster-wide: a daemon reads ``net_ports`` of the network, plans, and
inserts its row; ``(network, ip)`` and ``(network, mac)`` are unique, so two hosts planning
at once cannot both take one address (the loser plans again, see
:func:`corral.service.overlaynets.reserve`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    delete,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError

from corral.errors import AlreadyExists, InUse, InvalidSpec, StoreUnavailable
from corral.host.network import NetworkPlan, Port
from corral.store.assignments import channel
from corral.store.cluster import SCHEMA, vm_names

VNI_FIRST = 4096  # below are left for VNIs a site assigns by hand
VNI_LAST = (1 << 24) - 1

meta = MetaData(schema=SCHEMA)
networks = Table(
    "networks", meta,
    Column("name", String(64), primary_key=True),
    Column("vni", Integer, nullable=False, unique=True),
    Column("plan", Text, nullable=False),  # JSON NetworkPlan (vni, mtu and vxlan set)
    Column("home", String(64), nullable=False),
    Column("isolated", Boolean, nullable=False),
    Column("project", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
)
net_ports = Table(
    "net_ports", meta,
    Column("network", String(64), nullable=False),
    Column("vm", String(64), nullable=False),
    Column("mac", String(17), nullable=False),
    Column("ip", String(15), nullable=False),
    Column("ifname", String(15), nullable=False),
    Column("hostname", String(64)),
    Column("host", String(64), nullable=False),
    Column("at", Float, nullable=False),
    PrimaryKeyConstraint("network", "ip"),
    UniqueConstraint("network", "mac"),
)
net_hosts = Table(
    "net_hosts", meta,
    Column("network", String(64), nullable=False),
    Column("host", String(64), nullable=False),
    Column("underlay", String(45), nullable=False),
    PrimaryKeyConstraint("network", "host"),
)


@dataclass(frozen=True)
class ClusterNetwork:
    plan: NetworkPlan
    home: str
    isolated: bool
    project: str
    created_at: float

    @property
    def vni(self) -> int:
        return int(self.plan.vni or 0)


@dataclass(frozen=True)
class Reservation:
    port: Port
    host: str  # whose QEMU has (or last had) the NIC


def free_vni(used: Iterable[int]) -> int:
    """The lowest VNI from :data:`VNI_FIRST` that no network has.

    :raises InvalidSpec: every VNI is taken.
    """
    taken = set(used)
    for vni in range(VNI_FIRST, VNI_LAST + 1):
        if vni not in taken:
            return vni
    raise InvalidSpec("vni", "no free VXLAN network identifier left")


class ClusterNets:
    """The three tables above, read and written by one host's daemon."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        with self._tx() as conn:
            meta.create_all(conn)

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        """:raises StoreUnavailable: PostgreSQL cannot be reached (nothing was changed)."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except OperationalError as err:
            line = (str(err.orig or err).strip().splitlines() or ["unreachable"])[0]
            raise StoreUnavailable(f"the cluster store is unreachable: {line}") from err

    def close(self) -> None:
        self.engine.dispose()

    # ----- networks -----
    def networks(self) -> dict[str, ClusterNetwork]:
        with self._tx() as conn:
            rows = conn.execute(select(networks).order_by(networks.c.created_at)).all()
        return {r.name: ClusterNetwork(NetworkPlan(**json.loads(r.plan)), r.home, r.isolated,
                                       r.project, r.created_at) for r in rows}

    def add_network(self, plan: NetworkPlan, home: str, isolated: bool, project: str
                    ) -> NetworkPlan:
        """Store a new network with the lowest free VNI; return its plan with that VNI.

        :raises AlreadyExists: the cluster has a network of that name.
        :raises InvalidSpec: the subnet overlaps another cluster network's (written
            meanwhile by another host).
        """
        with self._tx() as conn:
            conn.execute(text(f"LOCK TABLE {SCHEMA}.networks IN EXCLUSIVE MODE"))
            rows = conn.execute(select(networks.c.name, networks.c.vni, networks.c.plan)).all()
            for r in rows:
                other = NetworkPlan(**json.loads(r.plan))
                if r.name == plan.name:
                    raise AlreadyExists(f"a network named '{plan.name}' exists in the "
                                        "cluster")
                if other.network.overlaps(plan.network):
                    raise InvalidSpec("subnet", f"{plan.subnet} overlaps network "
                                                f"'{r.name}' ({other.subnet})")
            plan = replace(plan, vni=free_vni(r.vni for r in rows))
            conn.execute(insert(networks).values(
                name=plan.name, vni=plan.vni, plan=json.dumps(asdict(plan)), home=home,
                isolated=isolated, project=project, created_at=time.time()))
        return plan

    def delete_network(self, name: str) -> None:
        """Forget network ``name`` (its carriers remove their parts when they see it gone).

        :raises InUse: NICs of VMs are on it (on any host).
        """
        with self._tx() as conn:
            conn.execute(text(f"LOCK TABLE {SCHEMA}.net_ports IN EXCLUSIVE MODE"))
            users = conn.execute(select(net_ports.c.vm, net_ports.c.host)
                                 .where(net_ports.c.network == name)).all()
            if users:
                raise InUse("network", name, "remove",
                            sorted({f"{u.vm} (on {u.host})" for u in users}))
            conn.execute(delete(networks).where(networks.c.name == name))
            conn.execute(delete(net_hosts).where(net_hosts.c.network == name))

    # ----- addresses -----
    def ports(self, network: str | None = None) -> list[Reservation]:
        query = select(net_ports).order_by(net_ports.c.at)
        if network is not None:
            query = query.where(net_ports.c.network == network)
        with self._tx() as conn:
            rows = conn.execute(query).all()
        return [Reservation(Port(r.network, r.vm, r.ifname, r.mac, r.ip, r.hostname), r.host)
                for r in rows]

    def reserve(self, port: Port, host: str) -> bool:
        """Hold ``port``'s address and MAC for its VM (replacing what that MAC held on the
        network); False when another NIC took the address or MAC first."""
        try:
            with self._tx() as conn:
                conn.execute(delete(net_ports).where(
                    (net_ports.c.network == port.network) & (net_ports.c.mac == port.mac)
                    & (net_ports.c.vm == port.vm)))
                conn.execute(insert(net_ports).values(
                    network=port.network, vm=port.vm, mac=port.mac, ip=port.ip,
                    ifname=port.ifname, hostname=port.hostname, host=host, at=time.time()))
                _wake_home(conn, [port.network])
        except IntegrityError:
            return False
        return True

    def release(self, vm: str, macs: Iterable[str] | None = None) -> None:
        """Give back the addresses of ``vm`` (of its NICs with ``macs`` only, if given)."""
        cond = net_ports.c.vm == vm
        if macs is not None:
            cond = cond & net_ports.c.mac.in_(list(macs))
        with self._tx() as conn:
            gone = conn.execute(delete(net_ports).where(cond).returning(net_ports.c.network))
            _wake_home(conn, {r.network for r in gone})

    def sweep(self, network: str, older_than: float) -> None:
        """Drop the reservations of ``network`` older than ``older_than`` seconds whose VM no
        host has: a define that failed after its NICs were planned."""
        with self._tx() as conn:
            conn.execute(delete(net_ports).where(
                (net_ports.c.network == network)
                & (net_ports.c.at < time.time() - older_than)
                & net_ports.c.vm.not_in(select(vm_names.c.name))))

    def owner(self, vm: str) -> str | None:
        """The host whose VM ``vm`` is (None once it is destroyed)."""
        with self._tx() as conn:
            owner = conn.execute(select(vm_names.c.host).where(vm_names.c.name == vm)).scalar()
        return str(owner) if owner is not None else None

    def moved(self, vm: str, host: str) -> None:
        """``vm``'s QEMU runs on ``host`` now: its NICs are there."""
        with self._tx() as conn:
            conn.execute(update(net_ports).where(net_ports.c.vm == vm).values(host=host))

    # ----- carriers -----
    def carriers(self) -> dict[str, dict[str, str]]:
        """network -> {host: underlay address} of every host carrying it now."""
        out: dict[str, dict[str, str]] = {}
        with self._tx() as conn:
            for r in conn.execute(select(net_hosts)):
                out.setdefault(r.network, {})[r.host] = r.underlay
        return out

    def carry(self, network: str, host: str, underlay: str) -> None:
        with self._tx() as conn:
            conn.execute(delete(net_hosts).where(
                (net_hosts.c.network == network) & (net_hosts.c.host == host)))
            conn.execute(insert(net_hosts).values(network=network, host=host,
                                                  underlay=underlay))

    def drop(self, network: str, host: str) -> None:
        with self._tx() as conn:
            conn.execute(delete(net_hosts).where(
                (net_hosts.c.network == network) & (net_hosts.c.host == host)))

    def snapshot(self) -> dict[str, Any]:
        """Everything at once, for one refresh of a daemon's cache."""
        return {"networks": self.networks(), "ports": self.ports(),
                "carriers": self.carriers()}


def _wake_home(conn: Connection, nets: Iterable[str]) -> None:
    """Tell the homes of ``nets`` (their dnsmasqs) that reservations changed, at commit."""
    homes = conn.execute(select(networks.c.home).distinct()
                         .where(networks.c.name.in_(list(nets)))).scalars()
    for home in homes:
        conn.execute(text("SELECT pg_notify(:c, '')"), {"c": channel("nets", home)})
