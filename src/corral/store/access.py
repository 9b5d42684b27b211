"""The store's side of access: projects (with their quotas) and API tokens.

Both are few, so they are read once and served from memory, like the VM records; each change
is one transaction on the :class:`~corral.store.db.Store`'s writer thread and reaches memory
once it is on disk. A token is kept as its public id, a random salt and
``sha256(salt + secret)``: never the secret itself (see :mod:`corral.service.projects` for
why a fast hash is the right one for a 256-bit random secret).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import delete, insert, select

from corral.store.schema import projects, tokens

QUOTAS = ("max_vms", "max_cpus", "max_memory", "max_disk")


@dataclass(frozen=True)
class ProjectRow:
    name: str
    max_vms: int | None = None
    max_cpus: int | None = None
    max_memory: int | None = None  # bytes
    max_disk: int | None = None  # bytes
    created_at: float = 0.0

    def quotas(self) -> dict[str, int | None]:
        return {q: getattr(self, q) for q in QUOTAS}


@dataclass(frozen=True)
class TokenRow:
    name: str
    id: str
    salt: str
    hash: str
    role: str
    project: str
    created_at: float
    expires_at: float | None

    def public(self) -> dict[str, Any]:
        """What may be shown of the token: everything but its salt and hash."""
        return {"name": self.name, "id": self.id, "role": self.role, "project": self.project,
                "created_at": self.created_at, "expires_at": self.expires_at}


class AccessStore:
    """Projects and tokens, cached; see the module doc."""

    def __init__(self, store: Any) -> None:  # the Store that holds it (db.py imports this)
        self._store = store
        with store.engine.connect() as conn:
            self.projects = {r.name: ProjectRow(**dict(r._mapping)) for r in conn.execute(
                select(projects).order_by(projects.c.created_at))}
            self.tokens = {r.name: TokenRow(**dict(r._mapping)) for r in conn.execute(
                select(tokens).order_by(tokens.c.created_at))}
        self._by_id = {t.id: t for t in self.tokens.values()}

    def _write(self, *statements: Any, event: tuple[str, str, dict[str, Any], str]) -> None:
        def write() -> None:
            with self._store._tx() as conn:
                for statement in statements:
                    conn.execute(statement)
                self._store._event(conn, *event)
        self._store._run(write)

    # --- projects ---
    def add_project(self, row: ProjectRow) -> ProjectRow:
        row = ProjectRow(**{**asdict(row), "created_at": time.time()})
        self._write(insert(projects).values(**asdict(row)),
                    event=(row.name, "project_created", row.quotas(), row.name))
        self.projects[row.name] = row
        return row

    def delete_project(self, name: str) -> None:
        self._write(delete(projects).where(projects.c.name == name),
                    event=(name, "project_deleted", {}, name))
        self.projects.pop(name, None)

    # --- tokens ---
    def add_token(self, row: TokenRow) -> None:
        self._write(insert(tokens).values(**asdict(row)),
                    event=(row.name, "token_created", {"role": row.role}, row.project))
        self.tokens[row.name] = row
        self._by_id[row.id] = row

    def delete_token(self, name: str) -> None:
        row = self.tokens[name]
        self._write(delete(tokens).where(tokens.c.name == name),
                    event=(name, "token_revoked", {}, row.project))
        self.tokens.pop(name, None)
        self._by_id.pop(row.id, None)

    def token_by_id(self, token_id: str) -> TokenRow | None:
        return self._by_id.get(token_id)
