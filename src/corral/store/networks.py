"""The store's side of virtual networks: what exists (networks, routers and their legs, port
forwards, firewall rules) and the records of the host objects each of them is made of.

All of it is small, so it is read once and then served from memory, like the VM records; each
change is one transaction on the :class:`~corral.store.db.Store`'s writer thread and reaches
memory once it is on disk. A network NIC's port lives in its VM's spec, not here.

The order of writes is what makes a daemon restart exact (see
:mod:`corral.host.network.state`): a unit's row is written *before* its host objects are made
and deleted *before* they are removed; its records (owner ``network:N``, ``router:R``,
``router:R/N``, ``vm:V``) are written once the objects exist and deleted once they are gone.
So after a crash the daemon finds rows whose objects may be partly missing (it makes them
again) and records whose unit is gone (it removes their objects), and nothing else.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Executable, delete, insert, select, update

from corral.host.network import Forward, Leg, NetworkPlan, Record, RouterPlan, Rule
from corral.host.network.nft import Policy
from corral.store.db import Store
from corral.store.schema import (
    firewall_rules,
    forwards,
    net_records,
    networks,
    router_legs,
    routers,
)


@dataclass(frozen=True)
class NetworkRow:
    plan: NetworkPlan
    isolated: bool  # no router may join it
    policy: Policy  # the firewall's default for traffic to its VMs
    created_at: float


@dataclass(frozen=True)
class ForwardRow:
    forward: Forward
    vm: str  # the VM whose address the forward goes to


@dataclass(frozen=True)
class RuleRow:
    id: int
    network: str | None  # None: the rule of a VM (``rule.vm``), on each of its networks
    rule: Rule


class NetStore:
    """Networks, routers, legs, forwards, rules and records, cached; see the module doc."""

    def __init__(self, store: Store) -> None:
        self._store = store
        with store.engine.connect() as conn:
            nets = conn.execute(select(networks).order_by(networks.c.created_at)).all()
            self.networks = {
                r.name: NetworkRow(NetworkPlan(**json.loads(r.plan)), bool(r.isolated),
                                   r.policy, r.created_at) for r in nets}
            routs = conn.execute(select(routers).order_by(routers.c.created_at)).all()
            self.routers = {r.name: RouterPlan(**json.loads(r.plan)) for r in routs}
            # the project of each network ("network:N") and router ("router:R")
            self.projects = {**{f"network:{r.name}": r.project for r in nets},
                             **{f"router:{r.name}": r.project for r in routs}}
            self.legs = {r.network: Leg(**json.loads(r.plan))
                         for r in conn.execute(select(router_legs))}
            self.forwards = {(r.proto, r.host_port): ForwardRow(
                Forward(r.router, r.proto, r.host_port, r.ip, r.port), r.vm)
                for r in conn.execute(select(forwards))}
            self.rules = {r.id: RuleRow(r.id, r.network, Rule(r.proto, r.port, r.source, r.vm))
                          for r in conn.execute(select(firewall_rules).order_by(
                              firewall_rules.c.id))}
            self._records: dict[str, list[Record]] = {}
            for r in conn.execute(select(net_records).order_by(net_records.c.id)):
                self._records.setdefault(r.owner, []).append(Record.from_dict(
                    {"kind": r.kind, "name": r.name, "owner": r.owner, "netns": r.netns,
                     "detail": r.detail}))

    def empty(self) -> bool:
        """Nothing recorded at all: no network work to do when the daemon starts."""
        return not (self.networks or self.routers or self._records)

    def _write(self, *statements: Executable,
               event: tuple[str, str, dict[str, Any]] | tuple[str, str, dict[str, Any], str]
               | None = None) -> None:
        """Run ``statements`` and record ``event`` (name, kind, detail): one transaction."""
        def write() -> None:
            with self._store._tx() as conn:
                for statement in statements:
                    conn.execute(statement)
                if event is not None:
                    self._store._event(conn, *event)
        self._store._run(write)

    # --- networks and routers ---
    def add_network(self, row: NetworkRow, project: str = "default") -> None:
        name = row.plan.name
        self._write(insert(networks).values(
            name=name, plan=json.dumps(asdict(row.plan)), isolated=row.isolated,
            policy=row.policy, created_at=row.created_at, project=project),
            event=(name, "network_created", {"subnet": row.plan.subnet}, project))
        self.networks[name] = row
        self.projects[f"network:{name}"] = project

    def set_policy(self, name: str, policy: Policy) -> None:
        self._write(update(networks).where(networks.c.name == name).values(policy=policy),
                    event=(name, "network_policy", {"policy": policy}))
        row = self.networks[name]
        self.networks[name] = NetworkRow(row.plan, row.isolated, policy, row.created_at)

    def delete_network(self, name: str) -> None:
        """The network's row and its rules (its records stay until its objects are gone)."""
        self._write(delete(networks).where(networks.c.name == name),
                    delete(firewall_rules).where(firewall_rules.c.network == name),
                    event=(name, "network_deleted", {}, self.project_of("network", name)))
        self.networks.pop(name, None)
        self.projects.pop(f"network:{name}", None)
        self.rules = {i: r for i, r in self.rules.items() if r.network != name}

    def add_router(self, plan: RouterPlan, project: str = "default") -> None:
        self._write(insert(routers).values(name=plan.name, plan=json.dumps(asdict(plan)),
                                           created_at=time.time(), project=project),
                    event=(plan.name, "router_created", {"uplink": plan.uplink is not None},
                           project))
        self.routers[plan.name] = plan
        self.projects[f"router:{plan.name}"] = project

    def delete_router(self, name: str) -> None:
        self._write(delete(routers).where(routers.c.name == name),
                    event=(name, "router_deleted", {}, self.project_of("router", name)))
        self.routers.pop(name, None)
        self.projects.pop(f"router:{name}", None)

    def project_of(self, kind: str, name: str) -> str:
        """The project of network or router ``name`` (``kind``: "network" or "router")."""
        return str(self.projects.get(f"{kind}:{name}", "default"))

    def add_leg(self, leg: Leg) -> None:
        self._write(insert(router_legs).values(network=leg.network, router=leg.router,
                                               plan=json.dumps(asdict(leg))),
                    event=(leg.router, "router_attached", {"network": leg.network}))
        self.legs[leg.network] = leg

    def delete_leg(self, network: str) -> None:
        leg = self.legs[network]
        self._write(delete(router_legs).where(router_legs.c.network == network),
                    event=(leg.router, "router_detached", {"network": network}))
        del self.legs[network]

    # --- forwards and firewall rules ---
    def add_forward(self, row: ForwardRow) -> None:
        f = row.forward
        self._write(insert(forwards).values(proto=f.proto, host_port=f.host_port,
                                            router=f.router, vm=row.vm, ip=f.ip, port=f.port),
                    event=(f.router, "forward_added", {"proto": f.proto, "host_port":
                                                      f.host_port, "vm": row.vm,
                                                      "port": f.port}))
        self.forwards[(f.proto, f.host_port)] = row

    def delete_forwards(self, keys: Iterable[tuple[str, int]]) -> None:
        keys = [k for k in keys if k in self.forwards]
        if not keys:
            return
        self._write(*(delete(forwards).where((forwards.c.proto == proto)
                                             & (forwards.c.host_port == port))
                      for proto, port in keys),
                    event=(self.forwards[keys[0]].forward.router, "forwards_removed",
                           {"ports": [f"{proto}/{port}" for proto, port in keys]}))
        for key in keys:
            del self.forwards[key]

    def add_rule(self, network: str | None, rule: Rule) -> RuleRow:
        ids: list[int] = []

        def write() -> None:
            with self._store._tx() as conn:
                new_id = conn.execute(insert(firewall_rules).values(
                    network=network, vm=rule.vm, proto=rule.proto, port=rule.port,
                    source=rule.source).returning(firewall_rules.c.id)).scalar_one()
                ids.append(int(new_id))
                self._store._event(conn, network or str(rule.vm), "firewall_rule_added",
                                   {"id": ids[0]})
        self._store._run(write)
        row = RuleRow(ids[0], network, rule)
        self.rules[row.id] = row
        return row

    def delete_rules(self, ids: Iterable[int]) -> None:
        ids = [i for i in ids if i in self.rules]
        if not ids:
            return
        first = self.rules[ids[0]]
        self._write(delete(firewall_rules).where(firewall_rules.c.id.in_(ids)),
                    event=(first.network or str(first.rule.vm), "firewall_rules_removed",
                           {"ids": ids}))
        for i in ids:
            del self.rules[i]

    # --- records of host objects ---
    def records(self, owner: str | None = None) -> list[Record]:
        """The records of ``owner`` in the order they were made (every record for None)."""
        if owner is not None:
            return list(self._records.get(owner, ()))
        return [r for rs in self._records.values() for r in rs]

    def owners(self) -> list[str]:
        return list(self._records)

    def owner_renamed(self, old: str, new: str) -> None:
        """The records of ``old`` are ``new``'s: the store wrote it (a VM renamed,
        :func:`corral.store.renames.rename_vm`); this cache follows."""
        if old in self._records:
            self._records[new] = self._records.pop(old)

    def set_records(self, owner: str, records: Iterable[Record]) -> None:
        """Replace the records of ``owner`` with ``records``."""
        records = list(records)
        self._write(delete(net_records).where(net_records.c.owner == owner),
                    *(insert(net_records).values(owner=owner, kind=r.kind, name=r.name,
                                                 netns=r.netns, detail=r.detail)
                      for r in records))
        if records:
            self._records[owner] = records
        else:
            self._records.pop(owner, None)

    def add_records(self, owner: str, records: Iterable[Record]) -> None:
        self.set_records(owner, [*self.records(owner), *records])

    def drop_records(self, owner: str, names: Iterable[str] | None = None) -> None:
        """Forget the records of ``owner`` (only those named ``names``, if given)."""
        gone = None if names is None else set(names)
        self.set_records(owner, [] if gone is None else
                         [r for r in self.records(owner) if r.name not in gone])
