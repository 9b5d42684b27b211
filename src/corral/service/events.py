"""The live event stream: every event the store commits (state changes, operations, queue
moves, and whatever else is recorded as an event), handed to each subscriber as it happens.

The store tells the hub about an event on its writer thread once the event's transaction is
committed; the hub moves it onto the event loop and puts it into each subscriber's queue.
Queues are bounded: a subscriber that does not keep up (a stalled browser) is dropped with
a note instead of slowing the daemon, and catches up from the event log when it comes back
(:meth:`Subscription.events` with ``since``: the log first, then the live events after the
last one it gave, so nothing is missed or given twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from corral import settings
from corral.store.db import Store

Event = dict[str, Any]
Observer = Callable[[Event], None]
log = logging.getLogger(__name__)
HISTORY_PAGE = 1000  # events read from the log at once while catching up


class Dropped(Exception):
    """The subscriber fell more than its queue's length behind and was let go."""


class Subscription:
    """One client of the stream: a bounded queue of live events."""

    def __init__(self, hub: EventHub, vm: str | None, size: int) -> None:
        self.hub = hub
        self.vm = vm
        self.queue: asyncio.Queue[Event] = asyncio.Queue(size)
        self.dropped = False
        self.reason = ""
        self.wake = asyncio.Event()

    def offer(self, ev: Event) -> None:
        if self.dropped or (self.vm is not None and ev["vm"] != self.vm):
            return
        try:
            self.queue.put_nowait(ev)
        except asyncio.QueueFull:
            self.hub.dropped_total += 1
            self.drop(f"the client fell more than {self.queue.maxsize} events behind; "
                      f"reconnect with Last-Event-ID to catch up")
        self.wake.set()

    async def events(self, since: int | None, idle: float = 15.0
                     ) -> AsyncIterator[Event | None]:
        """The events after id ``since`` from the log (none when None), then the live ones,
        each once and in order; None after each ``idle`` seconds without one (a heartbeat).

        :raises Dropped: the subscriber fell too far behind, or the daemon is stopping.
        """
        last = since if since is not None else 0  # the queue holds only newer events
        if since is not None:
            while True:
                page = await asyncio.to_thread(self.hub.db.events, last, self.vm, HISTORY_PAGE)
                for ev in page:
                    last = ev["id"]
                    yield ev
                if len(page) < HISTORY_PAGE:
                    break
        while True:
            if self.queue.empty():
                if self.dropped:
                    raise Dropped(self.reason)
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), idle)
                except TimeoutError:
                    yield None
                continue
            ev = self.queue.get_nowait()
            if ev["id"] > last:  # the log already gave what was committed before
                last = ev["id"]
                yield ev

    def drop(self, reason: str) -> None:
        self.dropped = True
        self.reason = reason
        self.hub.unsubscribe(self)
        self.wake.set()


class EventHub:
    """Fans committed events out to subscribers and in-process observers (the metrics)."""

    def __init__(self, db: Store) -> None:
        self.db = db
        self.loop = asyncio.get_running_loop()
        self.subscribers: set[Subscription] = set()
        self.observers: list[Observer] = []
        self.dropped_total = 0
        self.closed = False
        self._arrived: list[Event] = []  # committed, not yet fanned out (in id order)
        self._lock = threading.Lock()
        db.listeners.append(self._from_writer)

    def _from_writer(self, ev: Event) -> None:
        # events told close together (a pause and its audit record) wake the loop once
        with self._lock:
            self._arrived.append(ev)
            if len(self._arrived) > 1:
                return
        with contextlib.suppress(RuntimeError):  # the loop is closing: nobody listens
            self.loop.call_soon_threadsafe(self._fan_out)

    def _fan_out(self) -> None:
        with self._lock:
            arrived, self._arrived = self._arrived, []
        for ev in arrived:
            for observe in self.observers:
                try:
                    observe(ev)
                except Exception:  # a metric is not worth the stream
                    log.exception("an event observer failed")
            for sub in list(self.subscribers):
                sub.offer(ev)

    def subscribe(self, vm: str | None = None, size: int | None = None) -> Subscription:
        """A new subscriber of every event (of VM ``vm`` only, when given)."""
        sub = Subscription(self, vm, size or settings.value("events.queue"))
        self.subscribers.add(sub)
        if self.closed:  # the daemon is stopping: the stream ends at once
            sub.drop("the daemon is stopping")
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self.subscribers.discard(sub)

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(ValueError):
            self.db.listeners.remove(self._from_writer)
        for sub in list(self.subscribers):
            sub.drop("the daemon is stopping")
