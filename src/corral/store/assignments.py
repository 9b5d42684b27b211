"""The cluster's work list: VMs placed on a host (``pending``) or waiting for room anywhere
(``queued``), in ``corral_cluster.assignments``; the leader lock; every host's VMs.

An assignment goes ``queued → pending → claimed → done | failed``. Whoever takes a create
request writes it ``pending`` on the host placement chose, or ``queued`` when no host has
room; the leader turns queued ones into pending ones as room frees, in arrival order; the
chosen host's daemon claims its pending ones (``FOR UPDATE SKIP LOCKED``: one claim each,
even with two daemons racing) and writes the outcome, which the daemon that took the request
is waiting for. Each step is one transaction, so a leader or host killed between steps loses
nothing and does nothing twice: a claimed assignment whose host restarts is settled by that
host from its own store (the VM exists: done; it does not: failed).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, delete, insert, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError

from corral.errors import AlreadyExists, StoreUnavailable
from corral.store.cluster import (
    LEADER_KEY,
    SCHEMA,
    ClusterStore,
    assignments,
    driver_url,
    host_schema,
    vm_names,
)

KEEP_FINISHED = 600.0  # seconds a finished assignment stays for its requester to read


def _row(r: Any) -> dict[str, Any]:
    row = dict(r._mapping)
    for key in ("body", "options", "request", "result"):
        if row.get(key) is not None:
            row[key] = json.loads(row[key])
    return row


class Assignments:
    """The work list, over a :class:`~corral.store.cluster.ClusterStore`."""

    def __init__(self, cs: ClusterStore) -> None:
        self.cs = cs

    def add(self, vm: str, body: dict[str, Any], options: dict[str, Any],
            request: dict[str, Any], host: str | None) -> int:
        """Write a new assignment: ``pending`` on ``host``, or ``queued`` when None.

        :raises AlreadyExists: a VM (or a waiting request) of that name exists.
        """
        now = time.time()
        try:
            with self.cs.tx() as conn:
                owner = conn.execute(select(vm_names.c.host)
                                     .where(vm_names.c.name == vm)).scalar()
                if owner is not None:
                    raise AlreadyExists(f"a VM named '{vm}' exists on host {owner}; pick "
                                        "another name")
                conn.execute(delete(assignments).where(
                    (assignments.c.vm == vm) & assignments.c.state.in_(("done", "failed"))))
                ident = int(conn.execute(insert(assignments).values(
                    vm=vm, body=json.dumps(body), options=json.dumps(options),
                    request=json.dumps(request), host=host,
                    state="queued" if host is None else "pending", origin=self.cs.host,
                    created_at=now, updated_at=now).returning(assignments.c.id)).scalar_one())
                if host is not None:
                    notify(conn, "work", host)
                return ident
        except IntegrityError as err:
            raise AlreadyExists(f"a request for a VM named '{vm}' is already waiting; pick "
                                "another name") from err

    def add_takeover(self, vm: str, old_host: str, request: dict[str, Any], host: str
                     ) -> None:
        """(Leader) have ``host`` restart VM ``vm`` of lost host ``old_host``.

        :raises AlreadyExists: an assignment for ``vm`` is already waiting.
        """
        now = time.time()
        try:
            with self.cs.tx() as conn:
                conn.execute(delete(assignments).where(
                    (assignments.c.vm == vm) & assignments.c.state.in_(("done", "failed"))))
                conn.execute(insert(assignments).values(
                    vm=vm, body=json.dumps({"takeover": old_host}), options="{}",
                    request=json.dumps(request), host=host, state="pending",
                    origin=self.cs.host, created_at=now, updated_at=now))
                notify(conn, "work", host)
        except IntegrityError as err:
            raise AlreadyExists(f"an assignment for '{vm}' is already waiting") from err

    def get(self, ident: int) -> dict[str, Any] | None:
        with self.cs.tx() as conn:
            r = conn.execute(select(assignments).where(assignments.c.id == ident)).first()
        return _row(r) if r is not None else None

    def waiting(self) -> list[dict[str, Any]]:
        """Queued and not yet finished assignments, oldest first."""
        with self.cs.tx() as conn:
            rows = conn.execute(select(assignments).where(
                assignments.c.state.in_(("queued", "pending", "claimed")))
                .order_by(assignments.c.id)).all()
        return [_row(r) for r in rows]

    def place(self, ident: int, host: str) -> bool:
        """The leader puts a queued assignment on ``host``; False if it is no longer queued."""
        with self.cs.tx() as conn:
            placed = conn.execute(update(assignments).where(
                (assignments.c.id == ident) & (assignments.c.state == "queued")).values(
                host=host, state="pending", updated_at=time.time())).rowcount == 1
            if placed:
                notify(conn, "work", host)
            return placed

    def claim(self) -> list[dict[str, Any]]:
        """This host's pending assignments, now claimed by it (each by one daemon only)."""
        with self.cs.tx() as conn:
            ids = select(assignments.c.id).where(
                (assignments.c.host == self.cs.host) & (assignments.c.state == "pending")) \
                .order_by(assignments.c.id).with_for_update(skip_locked=True)
            rows = conn.execute(update(assignments)
                                .where(assignments.c.id.in_(ids.scalar_subquery()))
                                .values(state="claimed", updated_at=time.time())
                                .returning(*assignments.c)).all()
        return sorted((_row(r) for r in rows), key=lambda r: r["id"])

    def claimed(self) -> list[dict[str, Any]]:
        """This host's claimed assignments (a restarted daemon settles them)."""
        with self.cs.tx() as conn:
            rows = conn.execute(select(assignments).where(
                (assignments.c.host == self.cs.host) & (assignments.c.state == "claimed"))).all()
        return [_row(r) for r in rows]

    def finish(self, ident: int, ok: bool, result: dict[str, Any]) -> None:
        with self.cs.tx() as conn:
            origin = conn.execute(update(assignments).where(assignments.c.id == ident).values(
                state="done" if ok else "failed", result=json.dumps(result),
                updated_at=time.time()).returning(assignments.c.origin)).scalar()
            if origin is not None:
                notify(conn, "done", origin)

    def cancel(self, vm: str) -> bool:
        """Remove a queued request for ``vm``; False when there is none."""
        with self.cs.tx() as conn:
            return conn.execute(delete(assignments).where(
                (assignments.c.vm == vm) & (assignments.c.state == "queued"))).rowcount == 1

    def forget(self, ident: int) -> None:
        with self.cs.tx() as conn:
            conn.execute(delete(assignments).where(assignments.c.id == ident))

    def sweep(self) -> None:
        """Drop finished assignments nobody read for a long time."""
        with self.cs.tx() as conn:
            conn.execute(delete(assignments).where(
                assignments.c.state.in_(("done", "failed"))
                & (assignments.c.updated_at < time.time() - KEEP_FINISHED)))


def channel(kind: str, host: str) -> str:
    """The NOTIFY channel of ``host``'s new work (``work``), finished requests (``done``) or
    changed reservations of the networks it is the home of (``nets``)."""
    return f"corral_{kind}_{host_schema(host).removeprefix('corral_host_')}"


class Listener:
    """Wakes this daemon when another writes work for it or finishes its request: a
    connection of its own that LISTENs on this host's channels (:func:`channel`), read in
    a thread. Polling stays the fallback, so a lost notification only costs a poll."""

    def __init__(self, cs: ClusterStore, wake: Callable[[str], None]) -> None:
        self.cs = cs
        self.wake = wake
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="corral-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        import psycopg

        url = driver_url(self.cs.url).replace("postgresql+psycopg", "postgresql", 1)
        while not self._stop.is_set():
            try:
                with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
                    for kind in ("work", "done", "nets"):
                        conn.execute(f"LISTEN {channel(kind, self.cs.host)}")
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self.wake(note.channel.split("_")[1])
            except psycopg.Error:
                self._stop.wait(1.0)  # the store is away: polling carries on meanwhile


def notify(conn: Connection, kind: str, host: str) -> None:
    conn.execute(text("SELECT pg_notify(:c, '')"), {"c": channel(kind, host)})


class LeaderLock:
    """PostgreSQL's advisory lock :data:`LEADER_KEY`, held on a connection of its own."""

    def __init__(self, cs: ClusterStore) -> None:
        self.cs = cs
        self._conn: Connection | None = None

    @property
    def held(self) -> bool:
        return self._conn is not None

    def try_take(self) -> bool:
        """Hold the lock (True), whether already held or taken now; False when another
        daemon holds it. A broken connection drops leadership (and is tried again)."""
        try:
            if self._conn is not None:
                self._conn.execute(text("SELECT 1"))  # still ours while this answers
                return True
            conn = self.cs.engine.connect()
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                               {"k": LEADER_KEY}).scalar()
            conn.commit()
            if got:
                self._conn = conn
                return True
            conn.close()
            return False
        except (OperationalError, StoreUnavailable):
            self.drop()
            return False

    def drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # the connection is gone either way
                conn.invalidate()  # a closed session frees the lock


def cluster_vms(cs: ClusterStore, host_names: list[str]) -> list[dict[str, Any]]:
    """Every VM of the hosts named, read from each host's own schema: name, host, state,
    spec (JSON), started_at, created_at, pid, uid, project."""
    out: list[dict[str, Any]] = []
    with cs.tx() as conn:
        present = set(conn.execute(text(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'vms'"))
            .scalars())
        for host in host_names:
            schema = host_schema(host)
            if schema not in present:
                continue
            # only what the cluster still gives the host: a VM taken over from a lost
            # host stays in its schema until that host returns and fences it
            rows = conn.execute(text(
                f"SELECT v.name, v.state, v.spec, v.started_at, v.created_at, v.pid, v.uid, "
                f"v.project FROM {schema}.vms v JOIN {SCHEMA}.vm_names n ON n.name = v.name "
                "AND n.host = :host ORDER BY v.created_at"), {"host": host}).all()
            out.extend({**dict(r._mapping), "host": host} for r in rows)
    return out
