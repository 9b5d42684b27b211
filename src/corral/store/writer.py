"""The store's one writer thread: writes run there in the order they were asked for, so the
event loop never waits for the disk unless it asks to (:meth:`Writer.submit` returns a
future to wait on).

Writes that nobody waits for (:meth:`Writer.later`: a pause's new state, which QEMU can tell
again after a crash; an audit record) are held until the event loop's current turn ends and
then go together, in one transaction. A pause's answer is made and sent in that turn, so the
writer thread does not compete with it for the interpreter, and the state change and the
audit record of one request cost one commit instead of two. Anything submitted meanwhile
goes after them, so the order of writes (and of their events) is the order they were asked
for.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from sqlalchemy import Connection

log = logging.getLogger(__name__)
Write = Callable[[Connection], None]  # one write, given the transaction's connection


def log_failure(done: Future[Any]) -> None:
    if done.exception() is not None:
        log.error("a queued store write failed: %s", done.exception())


class Writer:
    """One thread that runs the store's writes in order. ``batch`` runs a list of held
    writes in one transaction (on the writer thread)."""

    def __init__(self, batch: Callable[[list[Write]], None]) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="corral-store")
        self._batch = batch
        self._held: list[Write] = []
        self._lock = threading.Lock()  # writes may be asked for from worker threads too

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run ``fn`` on the writer thread after every write asked for before it."""
        with self._lock:
            self._release()
            return self._pool.submit(fn)

    def later(self, write: Write) -> None:
        """Run ``write`` in order, without waiting for it: once the event loop's current turn
        ends, with the other writes held in that turn, in one transaction (off the loop: at
        once). A failure is logged."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            if loop is not None and not self._held:
                loop.call_soon(self.release)
            self._held.append(write)
            if loop is None:
                self._release()

    def release(self) -> None:
        """Send the held writes to the writer thread now."""
        with self._lock:
            self._release()

    def _release(self) -> None:
        if self._held:
            held, self._held = self._held, []
            self._pool.submit(self._batch, held).add_done_callback(log_failure)

    def shutdown(self) -> None:
        """Run what is held and queued, then stop the thread."""
        self.release()
        self._pool.shutdown(wait=True)
