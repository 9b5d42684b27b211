"""The event log of the store: every change writes its event in the same transaction, and
the events are told to listeners once that transaction commits (see :class:`~.db.Store`)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, insert, select

from corral.store.schema import events

log = logging.getLogger(__name__)
PUBLISH = "corral_events"  # a transaction's new events, told to listeners once committed
EventListener = Callable[[dict[str, Any]], None]
Apply = Callable[[Connection], None]  # a write's statements, in a transaction given to it


def log_failure(done: Future[None]) -> None:
    if done.exception() is not None:
        log.error("a queued store write failed: %s", done.exception())



class EventLog:
    """The event half of the store (it has the store's engine, writer and records)."""

    engine: Engine
    _writer: ThreadPoolExecutor
    _vms: dict[str, Any]  # name → VMRecord (its project is read)
    _tx: Callable[[], AbstractContextManager[Connection]]
    _held: list[Apply] | None = None

    def _submit(self, write: Callable[[], None]) -> Future[None]:
        """Queue ``write`` on the writer thread, after every write queued before it (the
        held ones too, see :meth:`together`)."""
        if self._held:
            held, self._held = self._held, []
            self._writer.submit(self._all, held).add_done_callback(log_failure)
        return self._writer.submit(write)

    def _all(self, held: list[Apply]) -> None:
        with self._tx() as conn:
            for apply in held:
                apply(conn)

    @contextmanager
    def together(self) -> Iterator[None]:
        """The writes behind (``update_vm(wait=False)``) made in the block are held, and
        go in one transaction at its end (or before any other write, in order): twenty
        VMs taken up at once cost the writer thread one commit, and the event loop, which
        shares the interpreter with it, is not held up by twenty."""
        self._held = []
        try:
            yield
        finally:
            self._submit(lambda: None).add_done_callback(log_failure)
            self._held = None

    def _behind(self, apply: Apply) -> None:
        """Queue a write nobody waits for (held in :meth:`together`)."""
        if self._held is not None:
            self._held.append(apply)
            return

        def write() -> None:
            with self._tx() as conn:
                apply(conn)

        self._submit(write).add_done_callback(log_failure)

    def _event(self, conn: Connection, vm: str, kind: str, detail: dict[str, Any],
               project: str | None = None) -> None:
        """An event of ``vm`` (or of the named object); in the VM's project unless
        ``project`` says which. Told to the listeners once its transaction commits."""
        if project is None:
            rec = self._vms.get(vm)
            project = rec.project if rec is not None else "default"
        ts, text = time.time(), json.dumps(detail)
        done = conn.execute(insert(events).values(ts=ts, vm=vm, kind=kind, detail=text,
                                                  project=project))
        key = done.inserted_primary_key
        assert key is not None
        conn.info[PUBLISH].append({"id": key[0], "ts": ts, "vm": vm, "kind": kind,
                                    "detail": json.loads(text), "project": project})

    def add_event(self, name: str, kind: str, detail: dict[str, Any],
                  project: str = "default") -> None:
        """Record an event that changes nothing else (an audit record; a setting changed,
        of ``host``), queued in order behind the writes before it."""
        self._behind(lambda conn: self._event(conn, name, kind, detail, project))

    def events(self, since: int = 0, vm: str | None = None, limit: int = 1000,
               tail: bool = False, project: str | None = None) -> list[dict[str, Any]]:
        """The first ``limit`` events after id ``since`` (``tail``: the last ``limit``), in
        order; ``vm``'s or ``project``'s only when given."""
        order = events.c.id.desc() if tail else events.c.id
        query = select(events).where(events.c.id > since).order_by(order).limit(limit)
        if vm is not None:
            query = query.where(events.c.vm == vm)
        if project is not None:
            query = query.where(events.c.project == project)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        out = [{**dict(r._mapping), "detail": json.loads(r.detail)} for r in rows]
        return out[::-1] if tail else out

