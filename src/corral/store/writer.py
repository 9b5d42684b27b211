"""The store's one writer thread: writes run there in the order they were asked for, so the
event loop never waits for the disk unless it asks to (:meth:`Writer.submit` returns a
future to wait on).

Writes that nobody waits for (:meth:`Writer.later`: a pause's new state, which QEMU can tell
again after a crash; an audit record) are held for :data:`HOLD` (20 ms) after the first of
them and then go together, in one transaction: a group commit. A pause's answer is made and
sent meanwhile, and so are the next few (a script pausing and resuming in a loop makes one
commit every 20 ms, not one per call), so the writer thread seldom competes with an answer
for the interpreter. Measured with two daemons side by side, pause and resume alternated
between them: 0.10-0.14 ms less per call (2.17-2.49 against 2.30-2.58 ms) than holding them
only to the end of the event loop's turn. Anything submitted meanwhile, and any read of the
event log (:meth:`~corral.store.db.Store.flush`), sends them first, so the order of writes
(and of their events) is the order they were asked for. A daemon killed outright (SIGKILL)
within those 20 ms loses them (the window was about a millisecond before): what adoption
reads again from QEMU, and the audit records of those calls.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import queue
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection

log = logging.getLogger(__name__)
Write = Callable[[Connection], None]  # one write, given the transaction's connection
#: how long writes nobody waits for are held to go together (see the module doc)
HOLD = 0.02
_Job = tuple[Callable[[], Any], "Future[Any] | None"]  # None: nobody waits (failures logged)


class Writer:
    """One thread that runs the store's writes in order. ``batch`` runs a list of held
    writes in one transaction (on the writer thread). (A thread and a queue of its own: a
    thread pool's ``submit`` cost a pause more than the rest of its write.)"""

    def __init__(self, batch: Callable[[list[Write]], None]) -> None:
        self._batch = batch
        self._held: list[Write] = []
        self._holding = 0  # inside holding(): held writes wait for its end
        self._lock = threading.Lock()  # writes may be asked for from worker threads too
        self._closed = False
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=_work, args=(self._jobs,), daemon=True,
                                        name="corral-store")
        self._thread.start()
        # what is queued still runs when the interpreter exits without a close
        self._at_exit = weakref.WeakMethod(self.shutdown)
        atexit.register(_at_exit, self._at_exit)

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run ``fn`` on the writer thread after every write asked for before it.

        :raises RuntimeError: the writer was shut down (as a thread pool's ``submit``).
        """
        done: Future[Any] = Future()
        with self._lock:
            self._check()
            self._release()
            self._jobs.put((fn, done))
        return done

    def later(self, write: Write) -> None:
        """Run ``write`` in order, without waiting for it: :data:`HOLD` after the first write
        held, with the others held meanwhile, in one transaction (off the loop: at once). A
        failure is logged.

        :raises RuntimeError: the writer was shut down.
        """
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            self._check()
            if loop is not None and not self._held and not self._holding:
                loop.call_later(HOLD, self.release)
            self._held.append(write)
            if loop is None:
                self._release()

    @contextmanager
    def holding(self) -> Iterator[None]:
        """The writes asked for with :meth:`later` in the block are held to its end, across
        turns of the loop, and go in one transaction (a write submitted meanwhile sends
        them first, to keep the order): twenty VMs taken up at once cost one commit."""
        with self._lock:
            self._holding += 1
        try:
            yield
        finally:
            with self._lock:
                self._holding -= 1
                if not self._holding:
                    self._release()

    def release(self) -> None:
        """Send the held writes to the writer thread now (inside :meth:`holding`: at its
        end)."""
        with self._lock:
            if not self._holding:
                self._release()

    def _check(self) -> None:
        if self._closed:
            raise RuntimeError("cannot write to a closed store")

    def _release(self) -> None:
        if self._held:
            held, self._held = self._held, []
            self._jobs.put((lambda: self._batch(held), None))

    def shutdown(self) -> None:
        """Run what is held and queued, then stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._release()
            self._jobs.put(None)
        self._thread.join()


def _at_exit(shutdown: weakref.WeakMethod[Callable[[], None]]) -> None:
    method = shutdown()
    if method is not None:
        method()


def _work(jobs: queue.SimpleQueue[_Job | None]) -> None:
    while (job := jobs.get()) is not None:
        fn, done = job
        if done is not None and not done.set_running_or_notify_cancel():
            continue
        try:
            result = fn()
        except BaseException as err:
            if done is None:
                log.error("a queued store write failed: %s", err)
            else:
                done.set_exception(err)
        else:
            if done is not None:
                done.set_result(result)
