"""The cluster's shared tables on PostgreSQL, and each host's own schema beside them.

One PostgreSQL database holds a cluster::

    corral_cluster.hosts        every host: facts, labels, usage, admin state, heartbeat
    corral_cluster.vm_names     every VM's name and its host: names are unique cluster-wide
    corral_cluster.assignments  VMs placed on a host (pending) or waiting for room (queued)
    corral_cluster.placements   why each VM went where it is (``corral show --explain``)
    corral_cluster.join_tokens  digests of the tokens a new host may join with
    corral_host_<name>.*        one host's own store (corral.store.db), written only by it

A host's own tables keep the single-writer rule of the SQLite store (its daemon caches its
VM records), so nothing of the one-host code changes; what hosts share is only in
``corral_cluster``. Times that decide whether a host is alive are the database's clock
(``clock_timestamp()``), never a host's, so hosts whose clocks differ still agree.

The leader is whichever daemon holds PostgreSQL's advisory lock :data:`LEADER_KEY` on its
own connection: when that daemon dies its connection closes and the lock is free for the
next one to take (see :class:`LeaderLock`).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import OperationalError

from corral.errors import AlreadyExists, CorralError, InvalidSpec, StoreUnavailable

SCHEMA = "corral_cluster"
LEADER_KEY = 0x636F7272616C  # "corral"
ADMIN_STATES = ("active", "cordoned", "draining")

meta = MetaData(schema=SCHEMA)
hosts = Table(
    "hosts", meta,
    Column("name", String(64), primary_key=True),
    Column("address", Text, nullable=False),  # its TLS API, HOST:PORT ('' without one)
    Column("fingerprint", Text, nullable=False),  # SHA-256 of its API's certificate
    Column("api_token", Text, nullable=False),  # an admin token of its API, for its peers
    Column("cpus", Integer, nullable=False),
    Column("memory", BigInteger, nullable=False),
    Column("disk", BigInteger, nullable=False),
    Column("accel", String(8), nullable=False),
    Column("arch", String(16), nullable=False),
    Column("labels", Text, nullable=False),  # JSON {key: value}
    Column("ratios", Text, nullable=False),  # JSON [cpu, memory, disk]
    Column("used", Text, nullable=False),  # JSON {cpus, memory, disk, vms, groups}
    Column("admin", String(12), nullable=False),  # active, cordoned or draining
    Column("instance", String(36), nullable=False),  # the daemon serving it now
    Column("heartbeat_at", Float, nullable=False),  # the database's clock
    Column("joined_at", Float, nullable=False),
)
vm_names = Table(
    "vm_names", meta,
    Column("name", String(64), primary_key=True),
    Column("host", String(64), nullable=False),
)
assignments = Table(
    "assignments", meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("vm", String(64), nullable=False, unique=True),
    Column("body", Text, nullable=False),  # JSON: the create request
    Column("options", Text, nullable=False),  # JSON: wait, timeout
    Column("request", Text, nullable=False),  # JSON: the placement request
    Column("host", String(64)),  # None while queued
    Column("state", String(12), nullable=False),  # queued, pending, claimed, done, failed
    Column("result", Text),  # JSON: the VM's view, or the error's body
    Column("origin", String(64), nullable=False),  # the host that took the request
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)
placements = Table(
    "placements", meta,
    Column("vm", String(64), primary_key=True),
    Column("detail", Text, nullable=False),  # JSON: the chosen host, each host's reason
    Column("at", Float, nullable=False),
)
join_tokens = Table(
    "join_tokens", meta,
    Column("digest", String(64), primary_key=True),
    Column("created_at", Float, nullable=False),
)

NOW = func.extract("epoch", func.clock_timestamp())


def driver_url(url: str) -> str:
    """``postgresql://…`` with the psycopg 3 driver named, for SQLAlchemy.

    :raises InvalidSpec: for a URL that is not PostgreSQL's.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres", "postgresql+psycopg"):
        raise InvalidSpec("cluster", f"'{url}' is not a postgresql:// URL")
    return urlunsplit(("postgresql+psycopg", *tuple(parts)[1:]))


def host_schema(host: str) -> str:
    """The schema of one host's own tables."""
    return "corral_host_" + re.sub(r"[^a-z0-9_]", "_", host.lower())


def _engine(url: str, host: str, search_path: str) -> Engine:
    # synchronous_commit=off: a commit is atomic and survives a killed daemon or PostgreSQL
    # backend, without waiting for a WAL fsync (the SQLite store's synchronous=NORMAL)
    return create_engine(driver_url(url), pool_pre_ping=True, connect_args={
        "options": f"-c search_path={search_path} -c synchronous_commit=off",
        "application_name": f"corral:{host}", "connect_timeout": 5})


def cluster_engine(url: str, host: str) -> Engine:
    """An engine for the shared tables (made if missing).

    :raises StoreUnavailable: PostgreSQL cannot be reached.
    """
    engine = _engine(url, host, SCHEMA)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
            meta.create_all(conn)
    except OperationalError as err:
        engine.dispose()
        raise StoreUnavailable(f"cannot reach the cluster store: {_line(err)}") from err
    return engine


def host_engine(url: str, host: str) -> Engine:
    """An engine whose unqualified tables are ``host``'s own schema (made if missing).

    :raises StoreUnavailable: PostgreSQL cannot be reached.
    """
    schema = host_schema(host)
    cluster_engine(url, host).dispose()
    engine = _engine(url, host, schema)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {schema}"))
    return engine


def _line(err: Exception) -> str:
    return (str(getattr(err, "orig", None) or err).strip().splitlines() or ["unreachable"])[0]


def claim_name(conn: Connection, name: str, host: str) -> None:
    """Claim a VM name for ``host``, in the caller's transaction.

    :raises AlreadyExists: another host has a VM of that name.
    """
    owner = conn.execute(select(vm_names.c.host).where(vm_names.c.name == name)
                         .with_for_update()).scalar()
    if owner is not None and owner != host:
        raise AlreadyExists(f"a VM named '{name}' exists on host {owner}; pick another name")
    if owner is None:
        conn.execute(insert(vm_names).values(name=name, host=host))


def move_name(conn: Connection, name: str, old: str, new: str) -> None:
    """Hand VM ``name`` from host ``old`` to host ``new`` (an HA restart), in the caller's
    transaction.

    :raises AlreadyExists: ``old`` no longer has it (another host took it over first).
    """
    moved = conn.execute(update(vm_names).where(
        (vm_names.c.name == name) & (vm_names.c.host == old)).values(host=new)).rowcount
    if moved != 1:
        raise AlreadyExists(f"VM '{name}' is no longer on host {old}")


def release_name(conn: Connection, name: str, host: str) -> None:
    conn.execute(delete(vm_names).where((vm_names.c.name == name) & (vm_names.c.host == host)))


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ClusterStore:
    """The shared tables, as one host's daemon reads and writes them."""

    def __init__(self, url: str, host: str) -> None:
        self.url = url
        self.host = host
        self.engine = cluster_engine(url, host)

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        """One transaction on the shared tables.

        :raises StoreUnavailable: PostgreSQL cannot be reached (nothing was changed).
        """
        try:
            with self.engine.begin() as conn:
                yield conn
        except OperationalError as err:
            raise StoreUnavailable(f"the cluster store is unreachable: {_line(err)}; "
                                   "nothing was changed") from err

    def close(self) -> None:
        self.engine.dispose()

    # ----- hosts -----
    def register(self, row: dict[str, Any], instance: str, token: str, down_after: float,
                 max_skew: float) -> None:
        """Join (or rejoin) the cluster as ``self.host``.

        :raises AlreadyExists: a live daemon (heartbeat within ``down_after``) serves it.
        :raises CorralError: the clock is off by more than ``max_skew``, or the join token
            is missing or wrong while the cluster has other hosts.
        """
        with self.tx() as conn:
            conn.execute(text("LOCK TABLE corral_cluster.hosts IN EXCLUSIVE MODE"))
            now = float(conn.execute(select(NOW)).scalar_one())
            if abs(now - time.time()) > max_skew:
                raise CorralError(f"this host's clock is {time.time() - now:+.0f} s off the "
                                  f"cluster store's (at most {max_skew:g} s): set it right "
                                  "(NTP) before joining")
            mine = conn.execute(select(hosts).where(hosts.c.name == self.host)).first()
            others = conn.execute(select(func.count()).select_from(hosts)
                                  .where(hosts.c.name != self.host)).scalar_one()
            if mine is None and others and not self._token_ok(conn, token):
                raise CorralError("joining this cluster needs a join token: run 'corral "
                                  "cluster token' on a member and start this daemon with "
                                  "CORRAL_JOIN_TOKEN set to it")
            if mine is not None and mine.instance != instance \
                    and now - mine.heartbeat_at < down_after:
                raise AlreadyExists(f"host name '{self.host}' is already served by a live "
                                    f"daemon (heartbeat {now - mine.heartbeat_at:.1f} s ago); "
                                    "give this one another name (CORRAL_HOST_NAME)")
            values = {**row, "instance": instance, "heartbeat_at": now}
            if mine is None:
                conn.execute(insert(hosts).values(name=self.host, admin="active",
                                                  joined_at=now, **values))
            else:
                conn.execute(update(hosts).where(hosts.c.name == self.host).values(**values))

    def _token_ok(self, conn: Connection, token: str) -> bool:
        return bool(token) and conn.execute(select(join_tokens.c.digest).where(
            join_tokens.c.digest == token_digest(token))).first() is not None

    def add_token(self, token: str) -> None:
        with self.tx() as conn:
            conn.execute(insert(join_tokens).values(digest=token_digest(token),
                                                    created_at=time.time()))

    def heartbeat(self, instance: str, used: dict[str, Any]) -> bool:
        """Say this host is alive and what it uses; False when another daemon took its name."""
        with self.tx() as conn:
            n = conn.execute(update(hosts).where(
                (hosts.c.name == self.host) & (hosts.c.instance == instance)).values(
                heartbeat_at=NOW, used=json.dumps(used))).rowcount
        return n == 1

    def list_hosts(self, down_after: float) -> list[dict[str, Any]]:
        """Every host with its ``state``: down (no heartbeat for ``down_after``), else its
        admin state (up, cordoned or draining), and ``silent_seconds``."""
        with self.tx() as conn:
            now = float(conn.execute(select(NOW)).scalar_one())
            rows = conn.execute(select(hosts).order_by(hosts.c.name)).all()
        out = []
        for r in rows:
            row = dict(r._mapping)
            for key in ("labels", "ratios", "used"):
                row[key] = json.loads(row[key])
            row["silent_seconds"] = round(now - row["heartbeat_at"], 3)
            row["state"] = ("down" if now - row["heartbeat_at"] > down_after else
                            "up" if row["admin"] == "active" else row["admin"])
            out.append(row)
        return out

    def set_admin(self, name: str, admin: str) -> bool:
        """Cordon, drain or make active host ``name``; False when there is no such host."""
        with self.tx() as conn:
            return conn.execute(update(hosts).where(hosts.c.name == name)
                                .values(admin=admin)).rowcount == 1

    def leader(self) -> str | None:
        """The host whose daemon holds the leader lock now."""
        with self.tx() as conn:
            app = conn.execute(text(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a "
                "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted AND "
                "l.objid = :lo AND l.classid = :hi"),
                {"lo": LEADER_KEY & 0xFFFFFFFF, "hi": LEADER_KEY >> 32}).scalar()
        return str(app).removeprefix("corral:") if app else None

    def owner_of(self, vm: str) -> str | None:
        with self.tx() as conn:
            return conn.execute(select(vm_names.c.host).where(vm_names.c.name == vm)).scalar()

    def note_placement(self, vm: str, detail: dict[str, Any]) -> None:
        with self.tx() as conn:
            conn.execute(delete(placements).where(placements.c.vm == vm))
            conn.execute(insert(placements).values(vm=vm, detail=json.dumps(detail),
                                                   at=time.time()))

    def placement(self, vm: str) -> dict[str, Any] | None:
        with self.tx() as conn:
            detail = conn.execute(select(placements.c.detail)
                                  .where(placements.c.vm == vm)).scalar()
        return json.loads(detail) if detail is not None else None

    def peer(self, name: str) -> tuple[str, str, str] | None:
        """(address, fingerprint, token) of host ``name``'s API; None without one."""
        with self.tx() as conn:
            row = conn.execute(select(hosts.c.address, hosts.c.fingerprint, hosts.c.api_token)
                               .where(hosts.c.name == name)).first()
        if row is None or not row.address:
            return None
        return row.address, row.fingerprint, row.api_token

    def route(self, vm: str) -> dict[str, Any] | None:
        """Where ``vm`` lives, in one query: its host, that host's API (address,
        fingerprint, token) and how long it has been silent; None when no host has it."""
        with self.tx() as conn:
            row = conn.execute(select(
                vm_names.c.host, hosts.c.address, hosts.c.fingerprint, hosts.c.api_token,
                (NOW - hosts.c.heartbeat_at).label("silent"))
                .select_from(vm_names.join(hosts, hosts.c.name == vm_names.c.host))
                .where(vm_names.c.name == vm)).first()
        return dict(row._mapping) if row is not None else None

    def owned_names(self, host: str | None = None) -> set[str]:
        """The VM names the cluster says are ``host``'s (this host's by default)."""
        with self.tx() as conn:
            return set(conn.execute(select(vm_names.c.name)
                                    .where(vm_names.c.host == (host or self.host))).scalars())

    def vm_row(self, host: str, name: str) -> dict[str, Any] | None:
        """VM ``name``'s record in host ``host``'s own schema."""
        with self.tx() as conn:
            row = conn.execute(text(f"SELECT * FROM {host_schema(host)}.vms WHERE name = :n"),
                               {"n": name}).first()
        return dict(row._mapping) if row is not None else None

    def hand_over(self, vm: str, old: str, new: str) -> None:
        """Move VM ``vm``'s name from host ``old`` to host ``new`` (a cold move).

        :raises AlreadyExists: ``old`` does not own it.
        """
        with self.tx() as conn:
            move_name(conn, vm, old, new)
