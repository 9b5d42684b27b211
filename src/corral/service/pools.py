"""Warm pools: VMs restored from a memory snapshot and paused, waiting to be handed out.

``corral pool create py --from-snapshot base:warm --size 4`` keeps four clones of the
snapshot ready (:mod:`.poolkeeper` makes and replaces them). ``corral run NAME --pool py``
takes one at once: the clone is renamed ``NAME`` (:mod:`.renaming`), continued, and given
the host's clock and its new hostname (:mod:`.handoff`: by a shell the clone left waiting,
without a process started then); the pool then starts a replacement in the background. A
request that finds the pool empty is a *miss*: it becomes an ordinary warm start, or with
``pool_only`` waits for the next clone. ``corral run --rm --pool py -- CMD`` runs one command
in a clone and removes it.

A pool belongs to the project it was made in, like a VM (:mod:`.access`): another
project's pools are not found, lists keep the caller's project's, and its clones (and the
VMs handed out, and those a miss warm-starts) are VMs of its project, under its quotas.

Pools are stored in one document of the store, so a restarted daemon takes them up again
with their clones (which it re-adopts like every VM). A pool's figures (size, free clones,
hand-outs, misses, clones replaced, refill and hand-out times) are in :meth:`Pools.get`;
:meth:`Pools.recommend` sizes a pool with Erlang C (:mod:`corral.perf.pools`).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import time
import uuid
from typing import TYPE_CHECKING, Any

from corral.domain import specs as sp
from corral.domain.states import State
from corral.errors import (
    AlreadyExists,
    CorralError,
    InvalidSpec,
    InvalidState,
    NotFound,
    Timeout,
)
from corral.service import access, handoff, nics, overlaynets, renaming
from corral.service.poolkeeper import DOC, Keeper, Pool

if TYPE_CHECKING:
    from corral.engine.driver import Machine
    from corral.service.guest import GuestService
    from corral.service.runtime import VMRuntime
    from corral.service.scheduling import Scheduler
    from corral.service.vms import VMs

MAX_NAME = 24   # a clone is NAME-xxxxxx, within a VM name's 32 characters
MAX_SIZE = 256
REFILL_AFTER = 0.25  # seconds between a hand-out and the start of its replacement


def _sizes(size: int, max_size: int | None) -> tuple[int, int]:
    top = size if max_size is None else max_size
    if not 0 <= size <= MAX_SIZE:
        raise InvalidSpec("size", f"{size} is not a pool size in [0, {MAX_SIZE}]")
    if not size <= top <= MAX_SIZE:
        raise InvalidSpec("max", f"the maximum {top} is not in [{size}, {MAX_SIZE}]")
    return size, top


class Pools:
    """Warm pools of one host."""

    def __init__(self, rt: VMRuntime, vms: VMs, guest: GuestService, sched: Scheduler
                 ) -> None:
        self.rt = rt
        self.vms = vms
        self.guest = guest
        self.sched = sched
        self.keeper = Keeper(rt, vms, guest)
        # VMs just handed out, taking the host's clock and their names
        self._settling: dict[str, asyncio.Task[None]] = {}

    def load(self) -> None:
        self.keeper.load()

    async def close(self) -> None:
        await self.keeper.close()

    def _pool(self, name: str) -> Pool:
        p = self.keeper.pools.get(name)
        if p is None or not access.visible(p.project):
            raise NotFound(f"no pool named '{name}'; see 'corral pool list'")
        return p

    def view(self, p: Pool) -> dict[str, Any]:
        refill = p.refill_time()
        handout = sorted(p.handout_seconds)
        return {"name": p.name, "project": p.project, "source": p.source, "size": p.size,
                "max": p.max_size, "free": len(p.clones), "clones": list(p.clones),
                "filling": p.filling, "autosize": p.autosize,
                "target_wait": p.target_wait, "ahead_of_queue": p.ahead_of_queue,
                "handouts": p.handouts, "misses": p.misses,
                "replaced": p.replaced,
                "refill_seconds": None if refill is None else round(refill, 4),
                "handout_seconds": handout[len(handout) // 2] if handout else None,
                "note": p.note, "drained": p.drained, "created_at": p.created_at}

    # ----- manage -----
    async def create(self, name: str, source: str, size: int, max_size: int | None = None,
                     autosize: bool = False, target_wait: float = 0.05,
                     ahead_of_queue: bool = False) -> dict[str, Any]:
        """Define a pool and start filling it (its template is made first, so a snapshot
        that cannot be warm-started is refused here). Its refills wait behind the admission
        queue unless ``ahead_of_queue``.

        :raises InvalidSpec: a bad name, size or source (not VM:SNAPSHOT, no running state,
            a VM on a virtual network).
        :raises NotFound: no such VM or snapshot.
        :raises AlreadyExists: a pool of that name exists.
        """
        from corral.service import warm

        sp.check_name(name, "name")
        if len(name) > MAX_NAME:
            raise InvalidSpec("name", f"a pool name has at most {MAX_NAME} characters")
        size, top = _sizes(size, max_size)
        if name in self.keeper.pools:
            raise AlreadyExists(f"a pool named '{name}' exists; see 'corral pool show {name}'")
        src, sep, snapshot = source.partition(":")
        if not sep or not src or not snapshot:
            raise InvalidSpec("from_snapshot", f"'{source}' is not VM:SNAPSHOT")
        spanning = [n.network for n in self.rt.get(src).spec.nics
                    if n.network and overlaynets.cluster_network(self.vms.net, n.network)]
        if spanning:
            raise InvalidSpec("from_snapshot", f"'{src}' has a NIC on '{spanning[0]}', a "
                                               "network that spans hosts; pools hold VMs on "
                                               "this host's networks only")
        await warm.ensure_template(self.rt, src, snapshot)
        p = Pool(name, source, size, top, autosize, target_wait, ahead_of_queue,
                 project=access.project_for_new())
        self.keeper.pools[name] = p
        self.keeper.save()
        self.keeper.start(name)
        return self.view(p)

    def list(self) -> builtins.list[dict[str, Any]]:
        return [self.view(p) for p in self.keeper.pools.values() if access.in_scope(p.project)]

    def get(self, name: str) -> dict[str, Any]:
        """:raises NotFound: no such pool."""
        return self.view(self._pool(name))

    def resize(self, name: str, size: int, max_size: int | None = None,
               autosize: bool | None = None, ahead_of_queue: bool | None = None
               ) -> dict[str, Any]:
        """:raises NotFound: no such pool. :raises InvalidSpec: a bad size."""
        p = self._pool(name)
        p.size, p.max_size = _sizes(size, max_size if max_size is not None
                                    else max(size, p.max_size))
        if autosize is not None:
            p.autosize = autosize
        if ahead_of_queue is not None:
            p.ahead_of_queue = ahead_of_queue
        p.note = None
        self.keeper.save()
        self.keeper.poke(name)
        return self.view(p)

    async def rm(self, name: str) -> builtins.list[str]:
        """Remove a pool and its free clones (VMs handed out are the users'); their names.

        :raises NotFound: no such pool.
        """
        p = self._pool(name)
        await self.keeper.stop(name)
        del self.keeper.pools[name]
        self.keeper.save()
        for clone in p.clones + ([p.filling] if p.filling else []):  # (cut short)
            await self.keeper.remove(clone)
        return p.clones

    # ----- hand out -----
    async def take(self, pool: str, name: str, pool_only: bool = False,
                   timeout: float = 120.0) -> dict[str, Any]:
        """A running VM ``name`` from ``pool``: a free clone at once, else (a miss) a warm
        start of the pool's snapshot, or with ``pool_only`` the next clone the pool makes.

        :raises NotFound: no such pool. :raises AlreadyExists: the name is taken.
        :raises Timeout: ``pool_only`` and no clone came within ``timeout``.
        """
        sp.check_name(name)
        p = self._pool(pool)
        if self.rt.db.get_vm(name) is not None:
            raise AlreadyExists(f"a VM named '{name}' exists; pick another name")
        t0 = time.monotonic()
        clone = self._free(p)
        if clone is None:
            p.misses += 1
            p.requested()
            self.keeper.save()
            if not pool_only:  # in the pool's project, as a clone would have been
                who = access.current()
                with access.acting_as(access.Principal(who.name, who.role, who.project,
                                                       p.project, who.home)):
                    view = await self.vms.create({"name": name, "from_snapshot": p.source},
                                                 start=True, wait=True, timeout=timeout)
                return {**view, "pool": {"name": pool, "hit": False, "clone": None,
                                         "seconds": round(time.monotonic() - t0, 4)}}
            clone = await self._wait_free(p, timeout)
        view = await self._hand_out(p, clone, name)
        seconds = time.monotonic() - t0
        p.requested(seconds)  # the replacement starts once the VM has its identity
        return {**view, "pool": {"name": pool, "hit": True, "clone": clone,
                                 "seconds": round(seconds, 5)}}

    def _free(self, p: Pool) -> str | None:
        for clone in list(p.clones):
            if self.keeper.is_free(clone):
                p.clones.remove(clone)
                return clone
        return None

    async def _wait_free(self, p: Pool, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if p.drained or self.keeper.pools.get(p.name) is not p:
                gone = self.keeper.pools.get(p.name) is not p
                raise InvalidState(p.name, "take a VM from", "removed" if gone else "drained",
                                   ["filled"], what="pool",
                                   because=None if gone else _reason(p.note))
            clone = self._free(p)
            if clone is not None:
                return clone
            await asyncio.sleep(0.02)
        raise Timeout(f"pool '{p.name}' had no free clone within {timeout:g} s; see "
                      f"'corral pool show {p.name}'")

    async def _hand_out(self, p: Pool, clone: str, name: str) -> dict[str, Any]:
        rt = self.rt
        async with rt.lock(clone), rt.lock(name):
            p.handouts += 1
            waiting = p.waiting.pop(clone, None)
            try:
                rec = renaming.rename(rt, clone, name, "handed_out",
                                      doc=(DOC, self.keeper.doc()), pool=p.name)
            except BaseException:
                p.handouts -= 1
                p.clones.insert(0, clone)
                if waiting is not None:
                    p.waiting[clone] = waiting
                raise
            self.sched.renamed(clone, name)
            networks = nics.renamed(self.vms.net, clone, name)
            live = rt.machine(rec)
            await live.machine.cont()
            rt.set_state(rec, State.RUNNING, "resumed", wait=False)
            settling = rt.background(self._settle_in(p, live.machine, name, _pair(waiting),
                                                     networks))
            self._settling[name] = settling
            settling.add_done_callback(lambda _: self._settling.pop(name, None))
            view = rt.view(rec)
        rt.forget(clone)
        return view

    async def settled(self, name: str) -> None:
        """Wait until VM ``name``, if just handed out, has the host's clock and its name (a
        request to its agent made later waits behind that anyway; one made in the same
        turn of the loop as the hand-out may not)."""
        settling = self._settling.get(name)
        if settling is not None:
            await asyncio.shield(settling)

    async def _settle_in(self, p: Pool, machine: Machine, name: str,
                         waiting: tuple[int, int] | None, networks: builtins.list[str]) -> None:
        """A VM just handed out takes the host's clock and its name; then, a moment later,
        the pool makes a replacement: a warm start takes the CPU for a few tenths of a
        second, which the new VM's first requests (its agent's first answers) need more."""
        try:
            if networks:  # its name in DNS, in the same task: a batch VM removed at once
                dns = asyncio.ensure_future(nics.rename_in_dns(self.vms.net, networks))
            await handoff.apply(machine, name, waiting)
            if networks:  # (awaited by settled(): else it put the removed VM's tap back)
                await dns
        finally:
            asyncio.get_running_loop().call_later(REFILL_AFTER, self.keeper.poke, p.name)

    async def batch(self, pool: str, argv: builtins.list[str], timeout: float = 600.0,
                    pool_only: bool = False) -> dict[str, Any]:
        """Run ``argv`` in a VM from ``pool`` and remove the VM; the command's output and
        exit code, with the time spent getting the VM and running.

        :raises NotFound: no such pool.
        """
        name = f"batch-{uuid.uuid4().hex[:8]}"
        t0 = time.monotonic()
        try:
            taken = await self.take(pool, name, pool_only, timeout=min(timeout, 600.0))
            await self.settled(name)  # the command sees the host's clock and the VM's name
            t1 = time.monotonic()
            result = await self.guest.exec(name, argv, timeout)
        finally:
            with contextlib.suppress(NotFound, CorralError):
                await self.vms.rm(name)
        t2 = time.monotonic()
        return {**result, "name": name, "pool": taken["pool"],
                "wait_and_boot_seconds": round(t1 - t0, 4), "run_seconds": round(t2 - t1, 4),
                "total_seconds": round(t2 - t0, 4)}

    # ----- the model -----
    def recommend(self, arrival_rate: float, target_wait: float,
                  runtime: float | None = None, refill_time: float | None = None,
                  pool: str | None = None) -> dict[str, Any]:
        """The smallest pool meeting ``target_wait`` (Erlang C), on ``refill_time`` or the
        refill time measured by ``pool``.

        :raises InvalidSpec: no refill time to go by, or a number out of range.
        :raises NotFound: no such pool.
        """
        from corral.scheduler import poolsize as model

        if refill_time is None and pool is not None:
            refill_time = self._pool(pool).refill_time()
        if refill_time is None:
            raise InvalidSpec("refill_time", "give the refill time (--refill-time), or a pool "
                                             "that has refilled (--pool)")
        return model.recommend(arrival_rate, refill_time, target_wait, runtime).as_dict()


def _pair(waiting: list[int] | None) -> tuple[int, int] | None:
    return (waiting[0], waiting[1]) if waiting and len(waiting) == 2 else None


def _reason(note: str | None) -> str | None:
    """Why a drained pool is drained, from its note ("drained: WHY; remove the pool …")."""
    return note.removeprefix("drained: ") if note else None
