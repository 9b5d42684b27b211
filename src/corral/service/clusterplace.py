"""Placement across a cluster's hosts: the rows of ``corral_cluster.hosts`` turned into the
placement code's hosts (:mod:`corral.scheduler.placement`), and a create request into a
placement request, with the reason every host was or was not chosen.

Only hosts that are ``up`` take new VMs: a down, cordoned or draining host is turned down
with its state as the reason. What hosts use is what their last heartbeat said, plus the VMs
already assigned to them and not yet started there (so two requests a heartbeat apart do not
both count on the same room); the chosen host's own admission is the last word.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from corral.domain import specs as sp
from corral.domain.sizes import parse_size
from corral.errors import InvalidSpec, NotFound
from corral.scheduler.placement import Host, Placement, PlacementRequest, Placer, Weigher
from corral.scheduler.resources import Overcommit, Resources


def request_of(body: dict[str, Any]) -> tuple[sp.VMCreate, PlacementRequest]:
    """The parsed create request and what placement needs of it.

    :raises InvalidSpec: a field is wrong.
    """
    req = sp.parse_create(body)
    memory = parse_size("memory", req.memory)
    if req.cpus < 1:
        raise InvalidSpec("cpus", f"{req.cpus} is not a CPU count; give at least 1")
    if req.anti_affinity and req.group is None:
        raise InvalidSpec("anti_affinity", "an anti-affinity needs its --group")
    cpus = 0 if req.timeslice else req.cpus
    labels = dict(req.on or {})
    if req.ha:
        labels["shared"] = "yes"  # only hosts with the shared storage
    return req, PlacementRequest(
        id=req.name, cpus=max(cpus, 1), memory=memory, labels=labels,
        affinity=None if req.anti_affinity else req.group,
        anti_affinity=req.group if req.anti_affinity else None, host=req.host)


def to_dict(r: PlacementRequest) -> dict[str, Any]:
    return {"id": r.id, "cpus": r.cpus, "memory": r.memory, "labels": dict(r.labels),
            "affinity": r.affinity, "anti_affinity": r.anti_affinity, "host": r.host}


def from_dict(d: dict[str, Any]) -> PlacementRequest:
    return PlacementRequest(id=d["id"], cpus=d["cpus"], memory=d["memory"],
                            labels=d.get("labels") or {}, affinity=d.get("affinity"),
                            anti_affinity=d.get("anti_affinity"), host=d.get("host"))


def _host(row: dict[str, Any]) -> Host:
    used = row["used"]
    return Host(name=row["name"], cpus=row["cpus"], memory=row["memory"], disk=row["disk"],
                labels=row["labels"] | {"arch": row["arch"], "accel": row["accel"]},
                ratios=Overcommit(*row["ratios"]),
                used=Resources(used.get("cpus", 0), used.get("memory", 0), used.get("disk", 0)),
                groups=used.get("groups", {}))


def placer(rows: list[dict[str, Any]], in_flight: Iterable[dict[str, Any]],
           weigher: Weigher) -> tuple[Placer, dict[str, str]]:
    """A placer over the hosts that are up, and the reason each other host is left out.
    ``in_flight``: assignments (with ``host`` and ``request``) not yet started there."""
    up = [_host(r) for r in rows if r["state"] == "up"]
    left_out = {r["name"]: f"host is {r['state']}" for r in rows if r["state"] != "up"}
    p = Placer(up, weigher)
    names = {h.name for h in up}
    for a in in_flight:
        if a.get("host") in names:
            req = from_dict(a["request"])
            p.assign(PlacementRequest(f"in-flight:{a['id']}", req.cpus, req.memory,
                                      affinity=req.affinity,
                                      anti_affinity=req.anti_affinity), a["host"])
    return p, left_out


def choose(rows: list[dict[str, Any]], in_flight: Iterable[dict[str, Any]],
           req: PlacementRequest, weigher: Weigher) -> dict[str, Any]:
    """Where ``req`` goes: ``{"host": name or None, "weigher", "hosts": {name: reason}}``,
    the reason of each host (``chosen``, ``fits`` or why not).

    :raises NotFound: the request names a host that is not a member of the cluster.
    """
    if req.host is not None and req.host not in {r["name"] for r in rows}:
        raise NotFound(f"no host '{req.host}' in the cluster; see 'corral host list'")
    p, left_out = placer(rows, in_flight, weigher)
    result: Placement = p.place(req, explain=True)
    reasons = {**left_out, **result.rejected}
    for name in (r["name"] for r in rows):
        if name not in reasons:
            reasons[name] = "chosen" if name == result.host else \
                f"fits, but {weigher} prefers another ({p.free(name).memory >> 20} MiB free)"
    return {"host": result.host, "weigher": weigher, "hosts": dict(sorted(reasons.items()))}
