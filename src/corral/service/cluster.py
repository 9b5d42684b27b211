"""This daemon as a member of a cluster (``corral serve --cluster postgresql://…``).

* **Joining.** The daemon registers its host (name, address, CPUs, memory, disk,
  accelerator, architecture, labels, overcommit ratios) in ``corral_cluster.hosts``; a host
  whose clock is far from the store's, a second live daemon claiming the same name, or a new
  host without a valid join token (``corral cluster token``) once the cluster has members is
  refused (see :meth:`ClusterStore.register`).
* **Heartbeats.** Every ``cluster.heartbeat`` seconds it writes what its VMs use; a host
  silent for ``cluster.down_after`` seconds is ``down`` and its VMs show as ``unknown``.
* **Leader.** Every member tries PostgreSQL's advisory lock each round; the one that holds
  it admits the cluster-wide queue (oldest first) onto whichever up host has room now. When
  the leader dies its session ends, the lock frees, and another member takes it on its next
  round (within a heartbeat).
* **Placement.** A create goes through :mod:`corral.service.clusterplace` over every host:
  when this host is chosen the VM is made here at once; otherwise it becomes an assignment
  that the chosen host's daemon carries out, and this daemon answers with its outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from corral import settings
from corral.domain.states import LIVE, State
from corral.errors import (
    CorralError,
    HostUnavailable,
    NoCapacity,
    NotFound,
    Timeout,
    from_dict,
)
from corral.service import clusterplace
from corral.store.assignments import Assignments, LeaderLock, Listener, cluster_vms
from corral.store.cluster import ClusterStore

if TYPE_CHECKING:
    from corral.service.projects import Tokens
    from corral.service.runtime import VMRuntime
    from corral.service.scheduling import Scheduler
    from corral.service.vms import VMs

log = logging.getLogger(__name__)
POLL = 0.2  # seconds between looks at this host's assignments


def host_name() -> str:
    return str(settings.value("cluster.host") or socket.gethostname())


class Member:
    """This daemon's part in the cluster: its host's row, the leader lock, assignments."""

    def __init__(self, rt: VMRuntime, sched: Scheduler, vms: VMs, accel: str,
                 tokens: Tokens | None = None, endpoint: tuple[str, str] | None = None
                 ) -> None:
        self.rt = rt
        self.tokens = tokens
        self.endpoint = endpoint
        self.sched = sched
        self.vms = vms
        self.accel = accel
        self.name = host_name()
        self.url = str(settings.value("cluster.url"))
        self.heartbeat = float(settings.value("cluster.heartbeat"))
        self.down_after = float(settings.value("cluster.down_after"))
        self.instance = str(uuid.uuid4())
        self.cs = ClusterStore(self.url, self.name)
        self.work = Assignments(self.cs)
        self.lock = LeaderLock(self.cs)
        self._task: asyncio.Task[None] | None = None
        self._last_beat = 0.0
        self._connected = True
        self._work = asyncio.Event()  # set when work for this host was written
        self._done = asyncio.Event()  # replaced each time a request of this host finishes
        self._listener: Listener | None = None

    # ----- joining and leaving -----
    async def open(self) -> None:
        """Join the cluster and start the heartbeat, leader and assignment loop.

        :raises CorralError: the cluster refused this host (the reason is in the message).
        """
        s = self.sched.settings
        address, fingerprint, token = self._api()
        row = {"address": address, "fingerprint": fingerprint, "api_token": token,
               "cpus": s.cpus,
               "memory": s.memory, "disk": s.disk, "accel": self.accel,
               "arch": os.uname().machine, "labels": _json(settings.value("cluster.labels")),
               "ratios": _json([s.ratios.cpu, s.ratios.memory, s.ratios.disk]),
               "used": _json(self.usage())}
        await asyncio.to_thread(self.cs.register, row, self.instance,
                                str(settings.value("cluster.token")), self.down_after,
                                float(settings.value("cluster.max_skew")))
        self._last_beat = time.monotonic()
        await self._settle_claimed()
        loop = asyncio.get_running_loop()

        def wake(kind: str) -> None:
            loop.call_soon_threadsafe(self._woken, kind)

        self._listener = Listener(self.cs, wake)
        self._listener.start()
        self._task = asyncio.create_task(self._loop(), name="cluster")

    def _woken(self, kind: str) -> None:
        if kind == "work":
            self._work.set()
        else:
            done, self._done = self._done, asyncio.Event()
            done.set()

    def _api(self) -> tuple[str, str, str]:
        """Where peers reach this host's TLS API, its certificate's fingerprint, and a fresh
        admin token for them (the last one is revoked: one peer token per host)."""
        if self.endpoint is None or self.tokens is None:
            return "", "", ""
        listen, fingerprint = self.endpoint
        address = str(settings.value("cluster.address"))
        if not address:
            host = listen.rpartition(":")[0].strip("[]")
            if host in ("0.0.0.0", "::"):
                raise CorralError("listening on every address: tell peers which one is this "
                                  "host's with --address HOST:PORT (cluster.address)")
            address = listen
        name = f"peer-{self.name}"[:32].lower()
        with contextlib.suppress(NotFound):
            self.tokens.revoke(name)
        secret = self.tokens.create(name, "admin", "default")["secret"]
        return address, fingerprint, str(secret)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._listener is not None:
            await asyncio.to_thread(self._listener.stop)
        self.lock.drop()
        self.cs.close()

    def usage(self) -> dict[str, Any]:
        """What this host's VMs hold, and how many of each placement group it has."""
        held = self.sched.inventory.allocated
        groups: dict[str, int] = {}
        recs = self.rt.db.list_vms()
        for rec in recs:
            if rec.spec.sched.group:
                groups[rec.spec.sched.group] = groups.get(rec.spec.sched.group, 0) + 1
        return {"cpus": held.cpus, "memory": held.memory, "disk": held.disk,
                "vms": len(recs), "live": sum(r.state in LIVE for r in recs),
                "groups": groups, "queued": len(self.sched.queue)}

    # ----- the loop -----
    async def _loop(self) -> None:
        while True:
            try:
                await self._round()
                if not self._connected:
                    log.warning("the cluster store answers again")
                self._connected = True
            except CorralError as err:
                if self._connected:
                    log.error("cluster round failed: %s", err.message)
                self._connected = False
            except Exception:
                log.exception("cluster round failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL):
                    await self._work.wait()
            self._work.clear()

    async def beat(self) -> None:
        """Write this host's heartbeat and usage now (also after each VM it makes, so the
        next placement sees it)."""
        self._last_beat = time.monotonic()
        if not await asyncio.to_thread(self.cs.heartbeat, self.instance, self.usage()):
            log.error("another daemon now serves host name '%s'", self.name)

    async def _round(self) -> None:
        if time.monotonic() - self._last_beat >= self.heartbeat:
            await self.beat()
            if await asyncio.to_thread(self.lock.try_take):
                await asyncio.to_thread(self.admit_queued)
        for a in await asyncio.to_thread(self.work.claim):
            self.rt.background(self._carry_out(a))

    def admit_queued(self) -> None:
        """(Leader) put queued assignments, oldest first, on hosts that have room now."""
        waiting = self.work.waiting()
        queued = [a for a in waiting if a["state"] == "queued"]
        if not queued:
            self.work.sweep()
            return
        rows = self.cs.list_hosts(self.down_after)
        p, _ = clusterplace.placer(rows, [a for a in waiting if a["host"]], self.weigher())
        for a in queued:
            placed = p.place(clusterplace.from_dict(a["request"]))
            if placed.host is not None and self.work.place(a["id"], placed.host):
                log.info("leader: admitted %s onto %s", a["vm"], placed.host)

    async def _carry_out(self, a: dict[str, Any]) -> None:
        """Make (and start) an assigned VM here; write the outcome for its requester."""
        opts = a["options"]
        try:
            view = await self.vms.create(_local_body(a["body"]), start=opts["start"],
                                         wait=opts["wait"], timeout=opts["timeout"])
            ok, result = True, {**view, "host": self.name}
        except CorralError as err:
            ok, result = False, err.to_dict()
        except Exception as err:
            log.exception("assignment %s failed", a["id"])
            ok, result = False, CorralError(f"host {self.name}: {err}").to_dict()
        await self.beat()
        await asyncio.to_thread(self.work.finish, a["id"], ok, result)

    async def _settle_claimed(self) -> None:
        """Assignments this host claimed before its daemon stopped: done if the VM exists."""
        for a in await asyncio.to_thread(self.work.claimed):
            rec = self.rt.db.get_vm(a["vm"])
            if rec is not None:
                result = {**self.rt.view(rec), "host": self.name}
                await asyncio.to_thread(self.work.finish, a["id"], True, result)
            else:
                err = CorralError(f"host {self.name} restarted before it made '{a['vm']}'")
                await asyncio.to_thread(self.work.finish, a["id"], False, err.to_dict())

    def weigher(self) -> Any:
        return settings.value("scheduler.weigher")

    # ----- create anywhere -----
    async def create(self, body: dict[str, Any], *, start: bool, wait: bool, timeout: float,
                     queue: bool) -> dict[str, Any]:
        """Place a new VM on a host of the cluster and make it there (see the module).

        :raises InvalidSpec: a field is wrong.
        :raises NotFound: ``host`` names no member.
        :raises NoCapacity: no host has room and queueing was refused (the reasons of each).
        """
        req, preq = clusterplace.request_of(body)
        rows = await asyncio.to_thread(self.cs.list_hosts, self.down_after)
        waiting = await asyncio.to_thread(self.work.waiting)
        choice = clusterplace.choose(rows, [a for a in waiting if a["host"]], preq,
                                     self.weigher())
        host = choice["host"]
        if host == self.name:
            try:
                view = await self.vms.create(_local_body(body), start=start, wait=wait,
                                             timeout=timeout, queue=queue)
            finally:
                await self.beat()
            await asyncio.to_thread(self.cs.note_placement, req.name, choice)
            return {**view, "host": self.name}
        if host is None and not (start and queue):
            raise NoCapacity("no host can take it now: " + "; ".join(
                f"{h}: {why}" for h, why in choice["hosts"].items()))
        options = {"start": start, "wait": wait, "timeout": timeout}
        ident = await asyncio.to_thread(self.work.add, req.name, body, options,
                                        clusterplace.to_dict(preq), host)
        await asyncio.to_thread(self.cs.note_placement, req.name, choice)
        if host is None:
            return queued_view(req.name, preq.cpus, preq.memory)
        return await self._outcome(ident, host, timeout + 60.0)

    async def _outcome(self, ident: int, host: str, limit: float) -> dict[str, Any]:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            done = self._done
            a = await asyncio.to_thread(self.work.get, ident)
            if a is None:
                raise CorralError(f"the request sent to host {host} vanished")
            if a["state"] in ("done", "failed"):
                await asyncio.to_thread(self.work.forget, ident)
                if a["state"] == "failed":
                    raise from_dict(a["result"])
                return dict(a["result"])
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await done.wait()
        raise Timeout(f"host {host} did not make the VM within {limit:.0f} s")

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


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


def _local_body(body: dict[str, Any]) -> dict[str, Any]:
    """The create body without the placement fields (already settled)."""
    return {k: v for k, v in body.items() if k not in ("host", "on")}


def queued_view(name: str, cpus: int, memory: int) -> dict[str, Any]:
    return {"name": name, "state": State.QUEUED.value, "ready": False, "cpus": cpus,
            "memory_bytes": memory, "nics": [], "disks": [], "operations": ["rm"],
            "host": None}


def remote_view(row: dict[str, Any], host_down: bool) -> dict[str, Any]:
    """A VM of another host as the shared store tells it."""
    import json

    spec = json.loads(row["spec"])
    view = {"name": row["name"], "state": row["state"], "ready": False,
            "cpus": spec["cpus"], "memory_bytes": spec["memory_bytes"], "nics": [],
            "disks": [], "operations": [], "host": row["host"], "image": spec.get("image"),
            "created_at": row["created_at"], "pid": row["pid"]}
    if host_down:
        view["last_state"] = view["state"]
        view["state"] = "unknown"
    return view


__all__ = ["Member", "host_name", "queued_view", "remote_view"]
