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
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from corral import settings
from corral.domain.states import LIVE
from corral.errors import (
    CorralError,
    NoCapacity,
    NotFound,
    Timeout,
    from_dict,
)
from corral.service import clusterha, clusterplace
from corral.service.clusterview import ClusterView, queued_view
from corral.service.migratein import Arrivals
from corral.store.assignments import LeaderLock, Listener
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


class Member(ClusterView):
    """This daemon's part in the cluster: its host's row, the leader lock, assignments."""

    def __init__(self, rt: VMRuntime, sched: Scheduler, vms: VMs, accel: str,
                 tokens: Tokens | None = None, endpoint: tuple[str, str] | None = None
                 ) -> None:
        name, url = host_name(), str(settings.value("cluster.url"))
        super().__init__(rt, vms, ClusterStore(url, name), name, url,
                         float(settings.value("cluster.down_after")))
        self.tokens = tokens
        self.endpoint = endpoint
        self.sched = sched
        self.accel = accel
        self.heartbeat = float(settings.value("cluster.heartbeat"))
        self.instance = str(uuid.uuid4())
        self.lock = LeaderLock(self.cs)
        self._task: asyncio.Task[None] | None = None
        self._last_beat = 0.0
        self._last_ok = time.monotonic()  # the last heartbeat the store took
        self._connected = True
        self._work = asyncio.Event()  # set when work for this host was written
        self._done = asyncio.Event()  # replaced each time a request of this host finishes
        self._listener: Listener | None = None
        self._loop_of: asyncio.AbstractEventLoop | None = None
        #: run after each heartbeat (the cluster's networks follow their hosts)
        self.on_beat: list[Callable[[], Awaitable[None]]] = []
        #: live migrations from here (:class:`.clustermigrate.Departure`), by VM
        self.departures: dict[str, Any] = {}
        self.arrivals = Arrivals(rt, sched, self.name, endpoint)  # and to here
        self.arrivals.on_arrival = self.beat

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
               "arch": os.uname().machine, "labels": _json(self.labels()),
               "ratios": _json([s.ratios.cpu, s.ratios.memory, s.ratios.disk]),
               "used": _json(self.usage())}
        await asyncio.to_thread(self.cs.register, row, self.instance,
                                str(settings.value("cluster.token")), self.down_after,
                                float(settings.value("cluster.max_skew")))
        self._last_beat = time.monotonic()
        await self._settle_claimed()
        loop = self._loop_of = asyncio.get_running_loop()

        def wake(kind: str) -> None:
            loop.call_soon_threadsafe(self._woken, kind)

        self._listener = Listener(self.cs, wake)
        self._listener.start()
        self.rt.db.listeners.append(self._freed)
        self._task = asyncio.create_task(self._loop(), name="cluster")

    def _freed(self, ev: dict[str, Any]) -> None:
        """(The store's writer thread) a VM here is gone: the room it held is told to the
        cluster in the next round, not the next heartbeat, so a placement right after its
        removal sees it."""
        if ev["kind"] == "destroyed" and self._loop_of is not None:
            self._loop_of.call_soon_threadsafe(self._woken, "freed")

    @property
    def store_ok(self) -> bool:
        """Whether the cluster store answered this daemon's last round (every 0.2 s)."""
        return self._connected

    def labels(self) -> dict[str, str]:
        labels = dict(settings.value("cluster.labels"))
        if settings.value("cluster.shared"):
            labels["shared"] = "yes"  # --ha VMs may run here
        return labels

    async def fence(self) -> None:
        """Stop this host's copies of VMs the cluster gave to other hosts (see
        :mod:`corral.service.clusterha`); the daemon does it before it adopts anything."""
        fenced = await clusterha.fence_moved(self.rt, self.cs, self.departures)
        if fenced:
            log.warning("fenced %s: other hosts run them now", ", ".join(fenced))

    def _woken(self, kind: str) -> None:
        if kind == "work":
            self._work.set()
        elif kind == "freed":
            self._last_beat = 0.0  # beat in this round
            self._work.set()
        elif kind == "nets":  # a reservation of a network homed here changed: follow now
            self.rt.background(self._after_beat())
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
        if self._freed in self.rt.db.listeners:
            self.rt.db.listeners.remove(self._freed)
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
                if time.monotonic() - self._last_ok > self.down_after:
                    killed = clusterha.self_fence(self.rt)
                    if killed:
                        log.error("the cluster store is out of reach: killed the HA VMs %s "
                                  "(the leader restarts them elsewhere)", ", ".join(killed))
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
        self._last_ok = time.monotonic()

    async def _round(self) -> None:
        if time.monotonic() - self._last_beat >= self.heartbeat:
            await self.beat()
            await self.fence()
            await self._after_beat()
            if await asyncio.to_thread(self.lock.try_take):
                await asyncio.to_thread(self.lead)
        for a in await asyncio.to_thread(self.work.claim):
            self.rt.background(self._carry_out(a))

    async def _after_beat(self) -> None:
        for hook in self.on_beat:
            try:
                await hook()
            except CorralError as err:  # not the store's round: no reason to fence
                log.warning("after the heartbeat: %s", err.message)

    def lead(self) -> None:
        """(Leader) restart the ``--ha`` VMs of lost hosts, then put queued assignments,
        oldest first, on hosts that have room now."""
        waiting = self.work.waiting()
        rows = self.cs.list_hosts(self.down_after)
        p, _ = clusterplace.placer(rows, [a for a in waiting if a["host"]], self.weigher())

        def choose(request: dict[str, Any]) -> str | None:
            return p.place(clusterplace.from_dict(request), reasons=False).host

        clusterha.restart_lost(self.cs, self.work, rows,
                               self.down_after + clusterha.GRACE * self.heartbeat, choose)
        for a in waiting:
            if a["state"] == "queued":
                host = choose(a["request"])
                if host is not None and self.work.place(a["id"], host):
                    log.info("leader: admitted %s onto %s", a["vm"], host)
        self.work.sweep()

    async def _carry_out(self, a: dict[str, Any]) -> None:
        """Make (and start) an assigned VM here; write the outcome for its requester."""
        opts = a["options"]
        try:
            if "takeover" in a["body"]:
                await clusterha.take_over(self.rt, self.cs, a["vm"], a["body"]["takeover"])
                view = await self.vms.start(a["vm"], queue=False)
            else:
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
        req, preq = clusterplace.request_of(body, self.name)
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

def _json(value: Any) -> str:
    import json

    return json.dumps(value)


def _local_body(body: dict[str, Any]) -> dict[str, Any]:
    """The create body without the placement fields (already settled)."""
    return {k: v for k, v in body.items() if k not in ("host", "on")}


__all__ = ["Member", "host_name"]
