"""``corral host drain NAME``: the host takes no new VMs (``draining``), then every VM running
there is live-migrated off it (:mod:`corral.service.clustermigrate`), ``parallel`` at a
time. Placement chooses each target as for a new VM (the draining host is left out, the
VM's group's affinity or anti-affinity respected; the moves chosen so far in this drain count
as already there, so two VMs moved at once do not both count on the same room).

Any daemon takes the request; the migrations are run by the drained host's own daemon (the
request is passed on to it over its TLS API). Each move is reported, a failed one with its
error (that VM keeps running where it was).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from corral.domain.states import State
from corral.errors import CorralError, HostUnavailable, NotFound
from corral.scheduler.placement import PlacementRequest
from corral.service import clusterplace
from corral.service.clustermigrate import Asked, PeerCall, migrate

if TYPE_CHECKING:
    from corral.service.cluster import Member
    from corral.store.db import VMRecord


async def drain(member: Member, host: str, parallel: int, call: PeerCall) -> dict[str, Any]:
    """Mark ``host`` draining and move its running VMs off it (see the module).

    :raises NotFound: no such host. :raises HostUnavailable: it is down or serves no API.
    """
    await member.set_admin(host, "drain")
    if host == member.name:
        return await evacuate(member, parallel, call)
    peer = await asyncio.to_thread(member.cs.peer, host)
    if peer is None:
        raise HostUnavailable(f"host {host} serves no API to drain through (--listen)", host)
    rows = {h["name"]: h for h in await member.hosts()}
    if host not in rows:
        raise NotFound(f"no host '{host}' in the cluster; see 'corral host list'")
    address, fingerprint, token = peer
    route = {"host": host, "address": address, "fingerprint": fingerprint, "api_token": token}
    return await call(route, "POST", f"/v1/cluster/evacuate?parallel={parallel}", None,
                      86400.0)


def _request(rec: VMRecord) -> PlacementRequest:
    s = rec.spec.sched
    labels = {"shared": "yes"} if s.ha else {}
    return PlacementRequest(id=rec.name, cpus=max(0 if s.timeslice else rec.spec.cpus, 1),
                            memory=rec.spec.memory_bytes, labels=labels,
                            affinity=None if s.anti_affinity else s.group,
                            anti_affinity=s.group if s.anti_affinity else None)


async def evacuate(member: Member, parallel: int, call: PeerCall) -> dict[str, Any]:
    """(On the drained host) live-migrate every running VM of this host elsewhere."""
    limit = asyncio.Semaphore(max(1, parallel))
    chosen: list[dict[str, Any]] = []  # moves chosen in this drain, counted as in flight
    choosing = asyncio.Lock()
    moves: list[dict[str, Any]] = []

    async def one(rec: VMRecord) -> None:
        async with limit:
            req = _request(rec)
            async with choosing:
                rows = await asyncio.to_thread(member.cs.list_hosts, member.down_after)
                rows = [r for r in rows if r["name"] != member.name]
                choice = clusterplace.choose(rows, chosen, req, member.weigher())
                to = choice["host"]
                if to is not None:
                    chosen.append({"id": len(chosen), "host": to,
                                   "request": clusterplace.to_dict(req)})
            if to is None:
                why = "; ".join(f"{h}: {r}" for h, r in choice["hosts"].items())
                moves.append({"vm": rec.name, "from": member.name, "to": None, "ok": False,
                              "error": f"no host can take it: {why}"})
                return
            try:
                vm = await migrate(member, rec.name, Asked(to), call)
                m = vm["migration"]
                moves.append({"vm": rec.name, "from": member.name, "to": to, "ok": True,
                              "total_time": m["total_time"], "downtime": m["downtime"],
                              "transferred": m["transferred"]})
            except CorralError as err:
                moves.append({"vm": rec.name, "from": member.name, "to": to, "ok": False,
                              "error": err.message})

    running = [r for r in member.rt.db.list_vms() if r.state == State.RUNNING]
    await asyncio.gather(*(one(r) for r in running))
    left = [r.name for r in member.rt.db.list_vms() if r.state == State.RUNNING]
    return {"host": member.name, "moves": sorted(moves, key=lambda m: str(m["vm"])),
            "left": sorted(left)}
