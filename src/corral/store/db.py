"""The store: SQLite through SQLAlchemy Core, schema kept by Alembic migrations; in a
cluster, PostgreSQL (one schema per host, see :mod:`corral.store.cluster`).

Every write is one transaction, so a daemon killed in the middle of an operation leaves the
last committed state; the daemon reconciles that with the live processes when it starts again.
SQLite runs in WAL mode with ``synchronous=NORMAL``: a commit is atomic and survives a killed
process without an fsync per write (it is the fsync that would make a pause cost milliseconds).
"""

from __future__ import annotations

import errno
import json
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.exc import OperationalError

from corral.domain.specs import VMSpec
from corral.domain.states import State
from corral.errors import DiskFull, StoreUnavailable
from corral.store.access import AccessStore
from corral.store.eventlog import PUBLISH, EventListener, EventLog
from corral.store.schema import disks, kv, snapshots, vms

HEAD = "0006"
log = logging.getLogger(__name__)
_MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass
class VMRecord:
    name: str
    uid: str
    spec: VMSpec
    state: State
    pid: int | None = None
    pid_start: int | None = None
    accel: str | None = None
    created_at: float = 0.0
    started_at: float | None = None
    ready_at: float | None = None
    exit_reason: str | None = None
    updated_at: float = 0.0
    saved_state: str | None = None
    saved_running: bool | None = None
    current_snapshot: str | None = None
    project: str = "default"

    @classmethod
    def from_row(cls, row: Any) -> VMRecord:
        data = dict(row._mapping)
        data["spec"] = VMSpec.model_validate_json(data["spec"])
        data["state"] = State(data["state"])
        return cls(**data)

    def boot_seconds(self) -> float | None:
        """Start to ready, when the guest agent has answered since the last start."""
        if self.ready_at is None or self.started_at is None:
            return None
        return round(self.ready_at - self.started_at, 3)

    def to_row(self) -> dict[str, Any]:
        row = {f.name: getattr(self, f.name) for f in fields(self)}
        row["spec"] = self.spec.model_dump_json()
        row["state"] = self.state.value
        return row


def _first_line(err: Exception) -> str:
    return (str(getattr(err, "orig", None) or err).strip().splitlines() or ["unreachable"])[0]


def _pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


class Store(EventLog):
    """All of Corral's persistent state.

    The daemon is the store's only writer, so VM records are read once and then served from
    memory; every change is written through in one transaction before it is cached. (A read
    from SQLite plus parsing the spec would cost more than the pause it describes.)

    With ``cluster`` (a PostgreSQL URL and this host's name) the same tables live in this
    host's own schema of that database, of which this daemon is still the only writer, and
    every VM's name is also claimed cluster-wide in the same transaction that adds it.
    """

    def __init__(self, path: Path, cluster: tuple[str, str] | None = None) -> None:
        self.path = path
        self.host: str | None = None
        if cluster is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(f"sqlite:///{path}",
                                                connect_args={"check_same_thread": False})
            event.listen(self.engine, "connect", _pragmas)
        else:
            from corral.store import cluster as cl

            url, self.host = cluster
            self.engine = cl.host_engine(url, self.host)
        # one writer thread: writes stay in order, and hot paths need not wait for them
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="corral-store")
        self._migrate()
        with self.engine.connect() as conn:
            rows = conn.execute(select(vms).order_by(vms.c.created_at)).all()
        self._vms: dict[str, VMRecord] = {r.name: VMRecord.from_row(r) for r in rows}
        self.access = AccessStore(self)
        #: called on the writer thread with each event (id, ts, vm, kind, detail, project)
        #: once its transaction is committed, in the order of their ids
        self.listeners: list[EventListener] = []

    def _migrate(self) -> None:
        with self.engine.begin() as conn:
            try:
                current = conn.exec_driver_sql(
                    "SELECT version_num FROM alembic_version").scalar()
            except Exception:
                current = None
        if current == HEAD:
            return
        from alembic import command  # imported only when there is work to do
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(_MIGRATIONS))
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        """One transaction. A full disk becomes :class:`~corral.errors.DiskFull` (the
        transaction is rolled back: the store is as it was)."""
        published: list[dict[str, Any]] = []
        try:
            with self.engine.begin() as conn:
                conn.info[PUBLISH] = published
                yield conn
        except (OperationalError, OSError) as err:
            if self.host is not None and isinstance(err, OperationalError):
                raise StoreUnavailable(f"the cluster store cannot be written: "
                                       f"{_first_line(err)}; nothing was changed") from err
            text = str(err).lower()
            if "full" in text or getattr(err, "errno", None) == errno.ENOSPC:
                raise DiskFull(f"the store at {self.path} cannot be written: the disk is "
                               "full; free some space and try again") from err
            raise
        for ev in published:  # committed: the event is history now; tell who listens
            for listener in self.listeners:
                try:
                    listener(ev)
                except Exception:  # the write stands whatever a listener does
                    log.exception("an event listener failed")

    def add_vm(self, rec: VMRecord) -> None:
        """:raises AlreadyExists: in a cluster, another host has a VM of that name."""
        rec.created_at = rec.updated_at = time.time()
        def write() -> None:
            with self._tx() as conn:
                if self.host is not None:
                    from corral.store import cluster as cl

                    cl.claim_name(conn, rec.name, self.host)
                conn.execute(insert(vms).values(**rec.to_row()))
                self._event(conn, rec.name, "created", {})

        self._run(write)
        self._vms[rec.name] = rec

    def update_vm(self, rec: VMRecord, kind: str | None = None,
                  detail: dict[str, Any] | None = None, wait: bool = True) -> None:
        """Write ``rec`` and, in the same transaction, an event of ``kind``.

        ``wait=False`` returns before the write is on disk (it is queued, in order, on the
        writer thread). Only for facts QEMU itself can tell again after a crash of the
        daemon, such as running versus paused, which adoption reads with ``query-status``.
        """
        rec.updated_at = time.time()
        row = rec.to_row()
        self._vms[rec.name] = rec

        def apply(conn: Connection) -> None:
            conn.execute(update(vms).where(vms.c.name == row["name"]).values(**row))
            if kind:
                self._event(conn, row["name"], kind, detail or {})

        if not wait:
            self._behind(apply)
            return
        self._run(lambda: self._all([apply]))

    def get_vm(self, name: str) -> VMRecord | None:
        return self._vms.get(name)

    def list_vms(self) -> list[VMRecord]:
        return sorted(self._vms.values(), key=lambda r: r.created_at)

    def delete_vm(self, name: str) -> None:
        def write() -> None:
            with self._tx() as conn:
                conn.execute(delete(vms).where(vms.c.name == name))
                conn.execute(delete(snapshots).where(snapshots.c.vm == name))
                if self.host is not None:
                    from corral.store import cluster as cl

                    cl.release_name(conn, name, self.host)
                self._event(conn, name, "destroyed", {})

        self._run(write)
        self._vms.pop(name, None)

    # --- small documents ---
    def put_doc(self, key: str, value: Any, vm: VMRecord | None = None,
                kind: str | None = None, detail: dict[str, Any] | None = None) -> None:
        """Write a JSON document, with an optional VM record and event, in one transaction."""
        text = json.dumps(value)
        row = vm.to_row() if vm is not None else None
        if vm is not None:
            vm.updated_at = time.time()
            self._vms[vm.name] = vm

        def write() -> None:
            with self._tx() as conn:
                conn.execute(delete(kv).where(kv.c.key == key))
                conn.execute(insert(kv).values(key=key, value=text))
                if row is not None:
                    conn.execute(update(vms).where(vms.c.name == row["name"]).values(**row))
                if kind:
                    self._event(conn, row["name"] if row else key, kind, detail or {})

        self._run(write)

    def get_doc(self, key: str) -> Any:
        with self.engine.connect() as conn:
            value = conn.execute(select(kv.c.value).where(kv.c.key == key)).scalar()
        return json.loads(value) if value is not None else None

    def list_docs(self, prefix: str) -> dict[str, Any]:
        """Every document whose key starts with ``prefix``, by key."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(kv).where(kv.c.key.startswith(prefix, autoescape=True))
                                .order_by(kv.c.key)).all()
        return {r.key: json.loads(r.value) for r in rows}

    def delete_doc(self, key: str, kind: str | None = None,
                   detail: dict[str, Any] | None = None) -> None:
        """Remove a document, with an optional event about ``key``, in one transaction."""
        def write() -> None:
            with self._tx() as conn:
                conn.execute(delete(kv).where(kv.c.key == key))
                if kind:
                    self._event(conn, key, kind, detail or {})

        self._run(write)

    # --- named disks ---
    def add_disk(self, row: dict[str, Any]) -> None:
        def write() -> None:
            with self._tx() as conn:
                conn.execute(insert(disks).values(created_at=time.time(), vm=None, **row))
                self._event(conn, row["name"], "disk_created", {"path": row["path"]},
                            row.get("project"))

        self._run(write)

    def get_disk(self, name: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(disks).where(disks.c.name == name)).first()
        return dict(row._mapping) if row else None

    def list_disks(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(disks).order_by(disks.c.created_at)).all()
        return [dict(r._mapping) for r in rows]

    def set_disk_vm(self, name: str, vm: str | None, rec: VMRecord | None = None) -> None:
        """Record where a disk is attached, with the VM's new spec in the same transaction."""
        def write() -> None:
            with self._tx() as conn:
                conn.execute(update(disks).where(disks.c.name == name).values(vm=vm))
                if rec is not None:
                    rec.updated_at = time.time()
                    conn.execute(update(vms).where(vms.c.name == rec.name).values(**rec.to_row()))
                    self._vms[rec.name] = rec
                self._event(conn, rec.name if rec else name,
                            "disk_attached" if vm else "disk_detached", {"disk": name})

        self._run(write)

    def delete_disk(self, name: str) -> None:
        def write() -> None:
            with self._tx() as conn:
                project = conn.execute(select(disks.c.project).where(
                    disks.c.name == name)).scalar()
                conn.execute(delete(disks).where(disks.c.name == name))
                self._event(conn, name, "disk_deleted", {}, project)

        self._run(write)

    # --- snapshots ---
    def add_snapshot(self, snap: dict[str, Any]) -> None:
        def write() -> None:
            with self._tx() as conn:
                conn.execute(insert(snapshots).values(**snap))
                conn.execute(update(vms).where(vms.c.name == snap["vm"])
                             .values(current_snapshot=snap["name"], updated_at=time.time()))
                self._event(conn, snap["vm"], "snapshot_created", {"snapshot": snap["name"]})

        self._run(write)
        if snap["vm"] in self._vms:
            self._vms[snap["vm"]].current_snapshot = snap["name"]

    def list_snapshots(self, vm: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(snapshots).where(snapshots.c.vm == vm)
                                .order_by(snapshots.c.created_at)).all()
        return [dict(r._mapping) for r in rows]

    def delete_snapshot(self, vm: str, name: str) -> None:
        """Remove a snapshot; its children hang from its parent from now on."""
        parent: list[str | None] = []

        def write() -> None:
            with self._tx() as conn:
                row = conn.execute(select(snapshots).where(
                    (snapshots.c.vm == vm) & (snapshots.c.name == name))).first()
                if row is None:
                    return
                parent.append(row.parent)
                conn.execute(update(snapshots).where(
                    (snapshots.c.vm == vm) & (snapshots.c.parent == name)).values(
                    parent=row.parent))
                conn.execute(update(vms).where(
                    (vms.c.name == vm) & (vms.c.current_snapshot == name)).values(
                    current_snapshot=row.parent))
                conn.execute(delete(snapshots).where(
                    (snapshots.c.vm == vm) & (snapshots.c.name == name)))
                self._event(conn, vm, "snapshot_deleted", {"snapshot": name})

        self._run(write)
        rec = self._vms.get(vm)
        if parent and rec is not None and rec.current_snapshot == name:
            rec.current_snapshot = parent[0]

    def _run(self, write: Callable[[], None]) -> None:
        """Run ``write`` on the writer thread, after every write queued before it."""
        self._submit(write).result()

    def flush(self) -> None:
        """Wait until every queued write is on disk."""
        self._submit(lambda: None).result()

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self.engine.dispose()
