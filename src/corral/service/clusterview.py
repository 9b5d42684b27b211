"""What any member of a cluster answers from the shared store: the hosts, every host's
VMs (``unknown`` when their host is down), one VM wherever it is, where a request about a
VM must be forwarded, cordon and drain, join tokens, and why a VM went where it is.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from corral.domain.states import State
from corral.errors import HostUnavailable, NotFound
from corral.store.assignments import Assignments, cluster_vms
from corral.store.cluster import ClusterStore

if TYPE_CHECKING:
    from corral.service.runtime import VMRuntime
    from corral.service.vms import VMs


class ClusterView:
    """The reads and the administration of the cluster, as one member serves them."""

    def __init__(self, rt: VMRuntime, vms: VMs, cs: ClusterStore, name: str, url: str,
                 down_after: float) -> None:
        self.rt = rt
        self.vms = vms
        self.cs = cs
        self.work = Assignments(cs)
        self.name = name
        self.url = url
        self.down_after = down_after

    # ----- read the cluster -----
    async def hosts(self) -> list[dict[str, Any]]:
        rows = await asyncio.to_thread(self.cs.list_hosts, self.down_after)
        leader = await asyncio.to_thread(self.cs.leader)
        out = []
        for r in rows:
            used, total = r["used"], {"cpus": r["cpus"], "memory": r["memory"],
                                      "disk": r["disk"]}
            out.append({
                "name": r["name"], "state": r["state"], "address": r["address"],
                "leader": r["name"] == leader, "cpus": r["cpus"], "memory_bytes": r["memory"],
                "disk_bytes": r["disk"], "accel": r["accel"], "arch": r["arch"],
                "labels": r["labels"], "vms": used.get("vms", 0),
                "allocation_ratio": {k: round(used.get(k, 0) / v, 4) if v else 0.0
                                     for k, v in total.items()},
                "silent_seconds": r["silent_seconds"]})
        return out

    async def list_vms(self, host: str | None = None) -> list[dict[str, Any]]:
        """Every VM of the cluster (or of ``host``), with its host; VMs of a down host are
        ``unknown``; requests waiting for room anywhere are ``queued`` with no host."""
        rows = await asyncio.to_thread(self.cs.list_hosts, self.down_after)
        state_of = {r["name"]: r["state"] for r in rows}
        names = [n for n in state_of if host is None or n == host]
        others = await asyncio.to_thread(cluster_vms, self.cs,
                                         [n for n in names if n != self.name])
        out = []
        if self.name in names:
            out += [{**v, "host": self.name} for v in self.vms.list()]
        for r in others:
            out.append(remote_view(r, state_of.get(r["host"]) == "down"))
        if host is None:
            waiting = await asyncio.to_thread(self.work.waiting)
            out += [queued_view(a["vm"], a["request"]["cpus"], a["request"]["memory"])
                    for a in waiting if a["state"] == "queued"]
        return out


    async def get(self, name: str) -> dict[str, Any]:
        """One VM wherever it is: this host's answers live, another's from the store.

        :raises NotFound: no VM (or waiting request) of that name in the cluster.
        """
        if self.rt.db.get_vm(name) is not None:  # here: answered without the store
            return {**await self.vms.get(name), "host": self.name}
        owner = await asyncio.to_thread(self.cs.owner_of, name)
        if owner is None or owner == self.name:
            if owner is None and self.rt.db.get_vm(name) is None:
                for a in await asyncio.to_thread(self.work.waiting):
                    if a["vm"] == name and a["state"] == "queued":
                        return queued_view(name, a["request"]["cpus"], a["request"]["memory"])
            return {**await self.vms.get(name), "host": self.name}
        rows = await asyncio.to_thread(self.cs.list_hosts, self.down_after)
        down = any(r["name"] == owner and r["state"] == "down" for r in rows)
        for row in await asyncio.to_thread(cluster_vms, self.cs, [owner]):
            if row["name"] == name:
                return remote_view(row, down)
        raise NotFound(f"no VM named '{name}'; see 'corral list'")

    async def route_of(self, name: str) -> dict[str, Any] | None:
        """Where a request about VM ``name`` must go: None when this daemon answers it (the
        VM is here, or nowhere); else its host and that host's API.

        :raises HostUnavailable: its host is down, or serves no API to forward to.
        """
        if self.rt.db.get_vm(name) is not None:
            return None
        route = await asyncio.to_thread(self.cs.route, name)
        if route is None or route["host"] == self.name:
            return None
        host = route["host"]
        if route["silent"] > self.down_after:
            raise HostUnavailable(f"VM '{name}' is on host {host}, which is down (no "
                                  f"heartbeat for {route['silent']:.0f} s)", host)
        if not route["address"]:
            raise HostUnavailable(f"VM '{name}' is on host {host}, whose daemon serves no API "
                                  "to forward to (start it with --listen)", host)
        return route

    async def cancel_queued(self, name: str) -> bool:
        """Drop a request for VM ``name`` still waiting for room in the cluster; False when
        there is none (the VM, if any, is then removed as usual)."""
        if self.rt.db.get_vm(name) is not None:
            return False
        return await asyncio.to_thread(self.work.cancel, name)

    # ----- administer -----
    async def set_admin(self, name: str, action: str) -> dict[str, Any]:
        """Cordon (no new VMs), drain (no new VMs; its VMs are to move off) or uncordon.

        :raises NotFound: no such host.
        """
        admin = {"cordon": "cordoned", "drain": "draining", "uncordon": "active"}[action]
        if not await asyncio.to_thread(self.cs.set_admin, name, admin):
            raise NotFound(f"no host '{name}' in the cluster; see 'corral host list'")
        return next(h for h in await self.hosts() if h["name"] == name)

    async def new_token(self) -> dict[str, Any]:
        token = secrets.token_urlsafe(24)
        await asyncio.to_thread(self.cs.add_token, token)
        return {"token": token, "cluster": self.url_without_password()}

    def url_without_password(self) -> str:
        parts = urlsplit(self.url)
        netloc = parts.netloc.rpartition("@")
        user = netloc[0].partition(":")[0]
        return urlunsplit(parts._replace(netloc=f"{user}@{netloc[2]}" if netloc[1]
                                         else parts.netloc))

    async def placement(self, name: str) -> dict[str, Any]:
        """Where the VM is and why each host was or was not chosen when it was placed.

        :raises NotFound: no VM of that name, or it was made before it had a placement.
        """
        view = await self.get(name)
        detail = await asyncio.to_thread(self.cs.placement, name)
        if detail is None:
            raise NotFound(f"no placement recorded for '{name}'")
        return {"vm": name, "host": view.get("host"), **detail}




def queued_view(name: str, cpus: int, memory: int) -> dict[str, Any]:
    return {"name": name, "state": State.QUEUED.value, "ready": False, "cpus": cpus,
            "memory_bytes": memory, "nics": [], "disks": [], "operations": ["rm"],
            "host": None}


def remote_view(row: dict[str, Any], host_down: bool) -> dict[str, Any]:
    """A VM of another host as the shared store tells it."""
    spec = json.loads(row["spec"])
    view = {"name": row["name"], "state": row["state"], "ready": False,
            "cpus": spec["cpus"], "memory_bytes": spec["memory_bytes"], "nics": [],
            "disks": [], "operations": [], "host": row["host"], "image": spec.get("image"),
            "created_at": row["created_at"], "pid": row["pid"]}
    if host_down:
        view["last_state"] = view["state"]
        view["state"] = "unknown"
    return view
