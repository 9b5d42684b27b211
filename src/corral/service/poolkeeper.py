"""What keeps a warm pool full: one background task per pool that replaces the clones handed
out, removes the ones that crashed (and counts them), shrinks to what the host holds, and,
with ``autosize``, sizes the pool from the requests it sees (:mod:`corral.perf.pools`).

A clone is a warm start of the pool's snapshot (:mod:`.warm`), started *without* queueing:
a pool never takes capacity that a queued request is waiting for (unless it was made
``ahead_of_queue``: its refills then take what fits even with requests waiting), and on a
full host it holds what fits and says so in its ``note``. Nor does it keep what it holds
from a VM that waits in the queue: free clones go, one at a time, until the VM starts.
Once its guest agent answers (and it has taken its own name, MAC and hostname) it gets
ready for its hand-out: it starts the shell that will set its clock and hostname then
(:mod:`.handoff`), and lists its interfaces once (the usual first question to a new VM:
under TCG its guest code is then translated before the clone waits); then it is paused,
its agent channel open and in step, and from then on it is free to hand out.

A pool belongs to a project like a VM (:mod:`.access`): its clones are VMs of that project,
made as the daemon working in it, so they count against its quotas (a refill over a quota
holds what fits and says so, like a full host) and run confined like any QEMU.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from corral.domain.states import State
from corral.errors import (
    AgentError,
    CorralError,
    InvalidSpec,
    NoCapacity,
    NotFound,
    QuotaExceeded,
    Timeout,
)
from corral.service import access, handoff

if TYPE_CHECKING:
    from corral.service.guest import GuestService
    from corral.service.runtime import VMRuntime
    from corral.service.vms import VMs

log = logging.getLogger(__name__)
DOC = "pools"
KEEP = 50           # refill times and hand-out moments kept per pool
IDLE_CHECK = 0.5    # seconds between checks of a full pool's clones
BACKOFF = 2.0       # seconds before a refill that failed is tried again
AUTOSIZE_WINDOW = 60.0
CLONE_READY = 120.0
IDENTITY_WAIT = 10.0
GIVE_WAY = 0.1      # seconds between clones removed for VMs waiting in the queue


@dataclass
class Pool:
    """A pool's settings, its free clones and its figures (stored as one document)."""

    name: str
    source: str                       # VM:SNAPSHOT
    size: int
    max_size: int
    autosize: bool = False
    target_wait: float = 0.05
    ahead_of_queue: bool = False      # refills may take capacity queued requests wait for
    clones: list[str] = field(default_factory=list)   # free: paused, ready, in order
    # the clone being made: still named here when its making was cut short (the pool
    # removed, the daemon stopped), for whoever removes it (Pools.rm, the next settle)
    filling: str | None = None
    # a free clone's identity shell: its pid, the agent's handle on its FIFO (.handoff)
    waiting: dict[str, list[int]] = field(default_factory=dict)
    handouts: int = 0
    misses: int = 0
    replaced: int = 0                  # clones that crashed (or vanished) while waiting
    refill_seconds: list[float] = field(default_factory=list)
    handout_seconds: list[float] = field(default_factory=list)
    requests: list[float] = field(default_factory=list)  # wall-clock moments of requests
    note: str | None = None
    drained: bool = False
    created_at: float = field(default_factory=time.time)
    project: str = access.DEFAULT_PROJECT

    def principal(self) -> access.Principal:
        """Who the pool's background work acts as: the daemon, working in its project
        (its clones are made there)."""
        return access.Principal(access.SYSTEM.name, "admin", None, self.project)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Pool:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def refill_time(self) -> float | None:
        return sum(self.refill_seconds) / len(self.refill_seconds) \
            if self.refill_seconds else None

    def requested(self, seconds: float | None = None) -> None:
        self.requests = [*self.requests, time.time()][-KEEP:]
        if seconds is not None:
            self.handout_seconds = [*self.handout_seconds, round(seconds, 5)][-KEEP:]


class Keeper:
    """The pools' records and background refills."""

    def __init__(self, rt: VMRuntime, vms: VMs, guest: GuestService) -> None:
        self.rt = rt
        self.vms = vms
        self.guest = guest
        self.pools: dict[str, Pool] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}

    # ----- the stored document -----
    def doc(self) -> dict[str, Any]:
        for p in self.pools.values():  # only free clones wait for a hand-out
            p.waiting = {c: w for c, w in p.waiting.items() if c in p.clones}
        return {name: asdict(p) for name, p in self.pools.items()}

    def save(self) -> None:
        self.rt.db.put_doc(DOC, self.doc())

    def load(self) -> None:
        """Take up the pools of an earlier daemon: their clones were adopted with every
        other VM; a clone that is gone or no longer paused is dropped (and replaced)."""
        for name, data in (self.rt.db.get_doc(DOC) or {}).items():
            self.pools[name] = Pool.from_dict({**data, "name": name})
        for p in self.pools.values():
            self.start(p.name)

    def start(self, name: str) -> None:
        self._wake[name] = asyncio.Event()
        # a fresh context (not the principal of the request that made the pool)
        self._tasks[name] = access.detached(self._keep(name), name=f"pool-{name}")

    async def stop(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        self._wake.pop(name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        for name in list(self._tasks):
            await self.stop(name)

    def poke(self, name: str) -> None:
        wake = self._wake.get(name)
        if wake is not None:
            wake.set()

    # ----- clones -----
    def is_free(self, clone: str) -> bool:
        rec = self.rt.db.get_vm(clone)
        return rec is not None and rec.state == State.PAUSED and clone in self.rt.live \
            and not self.rt.busy(clone)

    async def remove(self, clone: str) -> None:
        with contextlib.suppress(NotFound, CorralError):
            await self.vms.rm(clone)

    async def settle(self, p: Pool) -> None:
        """Drop clones that are gone or crashed (counted), the extra ones of a pool that
        shrank, and one left half made by a daemon that stopped while making it."""
        if p.filling is not None:  # a clone whose making a daemon stop cut short
            left, p.filling = p.filling, None
            self.save()
            await self.remove(left)
        dead = [c for c in p.clones if not self.is_free(c) and not self.rt.busy(c)]
        extra = p.clones[p.size:] if len(p.clones) > p.size else []
        if not dead and not extra:
            return
        p.clones = [c for c in p.clones if c not in dead and c not in extra]
        p.replaced += len(dead)
        self.save()
        for clone in dead + extra:
            if dead:
                log.warning("pool %s: clone %s is %s; replacing it", p.name, clone,
                            getattr(self.rt.db.get_vm(clone), "state", "gone"))
            await self.remove(clone)

    async def give_way(self, p: Pool) -> bool:
        """A VM waits in the admission queue while free clones hold the capacity: one of
        them goes (the newest), unless the pool was made ``ahead_of_queue``; a refill then
        waits until nobody does. Whether one went."""
        waiting = len(self.vms.sched.queue)
        if p.ahead_of_queue or not waiting or not p.clones:
            return False
        clone = p.clones.pop()
        self._note(p, f"holds {len(p.clones)} of {p.size}: gave way to "
                      f"{waiting} VM{'s' if waiting > 1 else ''} waiting in the queue")
        self.save()
        await self.remove(clone)
        return True

    async def _keep(self, name: str) -> None:
        while name in self.pools:
            p = self.pools[name]
            try:
                with access.acting_as(p.principal()):
                    delay = await self._step(p)
                if delay is None:
                    continue
            except asyncio.CancelledError:
                raise
            except Exception:  # the keeper must outlive one bad step
                log.exception("pool %s: refill step failed", name)
                delay = BACKOFF
            wake = self._wake.get(name)
            if wake is None:
                return
            wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await wake.wait()

    async def _step(self, p: Pool) -> float | None:
        """Settle the pool's clones and make one if it is short: None when one was made
        (go on at once), else the seconds to wait before the next step."""
        await self.settle(p)
        if p.autosize:
            self.autosize(p)
        if await self.give_way(p):
            return GIVE_WAY
        if p.drained or len(p.clones) >= p.size:
            return IDLE_CHECK
        return None if await self.refill(p) else BACKOFF

    async def refill(self, p: Pool) -> bool:
        """Make one clone; False (with the pool's note saying why) when it could not."""
        clone = f"{p.name}-{secrets.token_hex(3)}"
        p.filling = clone
        self.save()
        t0 = time.monotonic()
        try:
            await self.vms.create({"name": clone, "from_snapshot": p.source}, start=True,
                                  wait=True, timeout=CLONE_READY, queue=False,
                                  ahead=p.ahead_of_queue)
            await self._identity_taken(clone)
            waiting = await self._get_ready(clone)
            if self.rt.get(clone).state == State.RUNNING:
                await self.vms.pause(clone)
        except NoCapacity as err:
            await self.remove(clone)
            self._note(p, f"holds {len(p.clones)} of {p.size}: the host is full "
                          f"({err.message})")
            return False
        except QuotaExceeded as err:
            await self.remove(clone)
            self._note(p, f"holds {len(p.clones)} of {p.size}: {err.message}")
            return False
        except (NotFound, InvalidSpec) as err:  # the snapshot (or its VM) went away
            await self.remove(clone)
            await self.drain(p, f"drained: {err.message}; remove the pool "
                                f"('corral pool rm {p.name}')")
            return False
        except CorralError as err:
            await self.remove(clone)
            self._note(p, f"holds {len(p.clones)} of {p.size}: a refill failed: "
                          f"{err.message}")
            return False
        finally:
            task = asyncio.current_task()
            if task is None or not task.cancelling():  # else it stays named (above)
                p.filling = None
        if self.pools.get(p.name) is not p:  # removed meanwhile
            await self.remove(clone)
            return False
        p.clones.append(clone)
        if waiting is not None:
            p.waiting[clone] = list(waiting)
        p.refill_seconds = [*p.refill_seconds, round(time.monotonic() - t0, 4)][-KEEP:]
        if p.note and p.note.startswith("holds"):  # it fits again (an autosize note stays)
            p.note = None
        self.save()
        return True

    async def _identity_taken(self, clone: str) -> None:
        """Wait until the clone has taken its own hostname (a warm start does it in the
        background once the guest is ready), so that no command of that step is still
        pending when the clone is paused, to rename it later at a hand-out.

        :raises Timeout: it did not within 10 seconds.
        """
        deadline = time.monotonic() + IDENTITY_WAIT
        while time.monotonic() < deadline:
            with contextlib.suppress(AgentError):
                res = await self.guest.exec(clone, ["hostname"], timeout=5)
                if base64.b64decode(res.get("stdout") or "").strip() == clone.encode():
                    return
            await asyncio.sleep(0.05)
        raise Timeout(f"clone '{clone}' did not take its hostname in {IDENTITY_WAIT:g} s")

    async def _get_ready(self, clone: str) -> tuple[int, int] | None:
        """Start the shell that takes the clone's identity at its hand-out, and list its
        interfaces once (best effort: both only make the hand-out faster)."""
        live = self.rt.live.get(clone)
        if live is None:
            return None
        with contextlib.suppress(AgentError, Timeout, CorralError):
            await self.guest.addresses(clone)
        return await handoff.prepare(live.machine)

    def _note(self, p: Pool, note: str) -> None:
        if p.note != note:
            log.warning("pool %s: %s", p.name, note)
            p.note = note
            self.save()

    async def drain(self, p: Pool, note: str) -> None:
        """The pool's snapshot is gone: remove its free clones and make no more."""
        clones, p.clones = p.clones, []
        for clone in clones:
            await self.remove(clone)
        p.drained = True
        self._note(p, note)
        self.save()

    def autosize(self, p: Pool) -> None:
        """Size ``p`` from the request rate of the last minute and its refill time."""
        from corral.scheduler import poolsize as model

        now = time.time()
        recent = [t for t in p.requests if now - t <= AUTOSIZE_WINDOW]
        refill = p.refill_time()
        if len(recent) < 3 or refill is None:
            return
        rate = len(recent) / AUTOSIZE_WINDOW
        try:
            size = model.recommend(rate, refill, p.target_wait, max_size=p.max_size).size
        except InvalidSpec:
            size = p.max_size
        if size != p.size:
            p.size = size
            self._note(p, f"autosized to {size} for {rate:.3g} requests/s and "
                          f"{refill:.3g} s refills")
