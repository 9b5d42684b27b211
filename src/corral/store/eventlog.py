"""The event log of the store: every change writes its event in the same transaction, and
the events are told to listeners once that transaction commits (see :class:`~.db.Store`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Connection, Engine, insert, select

from corral.store.schema import events
from corral.store.writer import Writer

PUBLISH = "corral_events"  # a transaction's new events, told to listeners once committed
EventListener = Callable[[dict[str, Any]], None]
# built once: a statement built per write costs the writer thread more than its commit
_INSERT = insert(events)


class EventLog:
    """The event half of the store (it has the store's engine, writer and records)."""

    engine: Engine
    _writer: Writer
    _vms: dict[str, Any]  # name → VMRecord (its project is read)
    _tx: Callable[[], AbstractContextManager[Connection]]

    def together(self) -> AbstractContextManager[None]:
        """The writes nobody waits for (``update_vm(wait=False)``, events) made in the block
        go in one transaction at its end (see :meth:`Writer.holding`)."""
        return self._writer.holding()

    def _event(self, conn: Connection, vm: str, kind: str, detail: dict[str, Any],
               project: str | None = None) -> None:
        """An event of ``vm`` (or of the named object); in the VM's project unless
        ``project`` says which. Told to the listeners once its transaction commits."""
        if project is None:
            rec = self._vms.get(vm)
            project = rec.project if rec is not None else "default"
        ts, text = time.time(), json.dumps(detail)
        done = conn.execute(_INSERT, {"ts": ts, "vm": vm, "kind": kind, "detail": text,
                                      "project": project})
        key = done.inserted_primary_key
        assert key is not None
        conn.info[PUBLISH].append({"id": key[0], "ts": ts, "vm": vm, "kind": kind,
                                    "detail": json.loads(text), "project": project})

    def add_event(self, name: str, kind: str, detail: dict[str, Any],
                  project: str = "default") -> None:
        """Record an event that changes nothing else (an audit record; a setting changed,
        of ``host``), queued in order behind the writes before it (not waited for)."""
        self._writer.later(lambda conn: self._event(conn, name, kind, detail, project))

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

