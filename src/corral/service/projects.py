"""Projects (with quotas) and API tokens: the slices ``manager.projects`` and
``manager.tokens``.

A token is ``crl_<id>_<secret>``: ``id`` finds its row, ``secret`` is 256 random bits. The
store keeps ``sha256(salt + secret)`` with a random salt per token, never the secret. A slow
password hash (argon2, bcrypt) exists to make guessing a *human-chosen* password expensive;
a 256-bit random secret cannot be guessed at any speed, so it would only add tens of
milliseconds and a native dependency to every request. The comparison is constant-time.
Revocation removes the row, so the next request with that token is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import TYPE_CHECKING, Any

from corral.domain.sizes import parse_duration, parse_size
from corral.domain.specs import check_name
from corral.errors import AlreadyExists, InUse, InvalidSpec, NotFound, Unauthorized
from corral.service import access, quotas
from corral.store.access import QUOTAS, ProjectRow, TokenRow

if TYPE_CHECKING:
    from corral.service.netstate import Networks
    from corral.service.runtime import VMRuntime

PREFIX = "crl_"


def _no_project(name: str) -> NotFound:
    return NotFound(f"no project named '{name}'; see 'corral project list'")


def _limits(limits: dict[str, Any]) -> dict[str, int | None]:
    """Quotas as given (``max_memory``/``max_disk``: sizes like ``16G``) in numbers."""
    out: dict[str, int | None] = {}
    for key in QUOTAS:
        value = limits.get(key)
        if value is None:
            out[key] = None
        elif key in ("max_memory", "max_disk"):
            out[key] = parse_size(key, value, default_unit="G" if key == "max_disk" else "M")
        elif isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1 << 20:
            raise InvalidSpec(key, f"{value!r} is not a count in [0, {1 << 20}]")
        else:
            out[key] = value
    return out


class Projects:
    """Projects: create, list, show (quotas and usage), change quotas, remove."""

    def __init__(self, rt: VMRuntime, net: Networks) -> None:
        self.rt = rt
        self.net = net

    @property
    def _db(self) -> Any:
        return self.rt.db.access

    def _row(self, name: str) -> ProjectRow:
        row = self._db.projects.get(name)
        if row is None or not access.visible(name):
            raise _no_project(name)
        return row  # type: ignore[no-any-return]

    async def view(self, row: ProjectRow) -> dict[str, Any]:
        used: dict[str, int] = quotas.usage(self.rt, row.name)
        used["disk"] = await quotas.disk_usage(self.rt, row.name)
        return {"name": row.name, "created_at": row.created_at, "quotas": row.quotas(),
                "usage": used}

    async def create(self, name: str, limits: dict[str, Any]) -> dict[str, Any]:
        """:raises AlreadyExists: the name is taken. :raises InvalidSpec: a bad quota."""
        check_name(name)
        numbers = _limits(limits)
        if name in self._db.projects:
            raise AlreadyExists(f"a project named '{name}' exists")
        return await self.view(self._db.add_project(_project(name, numbers)))

    async def set_quotas(self, name: str, limits: dict[str, Any]) -> dict[str, Any]:
        """Change the quotas given in ``limits`` (the others stay)."""
        row = self._row(name)
        numbers = {k: v for k, v in _limits(limits).items() if k in limits}
        self._db.delete_project(name)
        return await self.view(self._db.add_project(_project(name, {**row.quotas(),
                                                                     **numbers})))

    async def list(self) -> list[dict[str, Any]]:
        return [await self.view(r) for r in self._db.projects.values()
                if access.in_scope(r.name)]

    async def get(self, name: str) -> dict[str, Any]:
        return await self.view(self._row(name))

    def rm(self, name: str) -> None:
        """:raises InUse: it still holds VMs, disks, networks, routers or tokens.
        :raises InvalidSpec: it is ``default``, where objects go when no project is named."""
        self._row(name)
        rt = self.rt
        users = [f"vm {r.name}" for r in rt.db.list_vms() if r.project == name]
        users += [f"disk {d['name']}" for d in rt.db.list_disks() if d["project"] == name]
        users += [f"token {t.name}" for t in self._db.tokens.values() if t.project == name]
        users += [key.replace(":", " ") for key, p in self.net.db.projects.items() if p == name]
        if name == access.DEFAULT_PROJECT:
            raise InvalidSpec("name", "'default' holds what no project is named for; it "
                                      "cannot be removed")
        if users:
            raise InUse("project", name, "remove", users)
        self._db.delete_project(name)


class Tokens:
    """API tokens: create (the secret is shown once), list, revoke, authenticate."""

    def __init__(self, rt: VMRuntime) -> None:
        self.rt = rt

    @property
    def _db(self) -> Any:
        return self.rt.db.access

    def create(self, name: str, role: str, project: str, expires: str | None = None
               ) -> dict[str, Any]:
        """A new token; the answer holds its ``secret``, which is never shown again.

        :raises InvalidSpec: bad name, role or expiry. :raises NotFound: no such project.
        :raises AlreadyExists: the name is taken.
        """
        check_name(name)
        if role not in access.ROLES:
            raise InvalidSpec("role", f"'{role}' is not a role; use admin, operator or viewer")
        lifetime = parse_duration("expires", expires) if expires else None
        if project not in self._db.projects:
            raise _no_project(project)
        if name in self._db.tokens:
            raise AlreadyExists(f"a token named '{name}' exists; revoke it first")
        token_id, secret, salt = secrets.token_hex(8), secrets.token_urlsafe(32), \
            secrets.token_hex(16)
        now = time.time()
        row = TokenRow(name, token_id, salt, _digest(salt, secret), role, project, now,
                       now + lifetime if lifetime else None)
        self._db.add_token(row)
        return {**row.public(), "secret": f"{PREFIX}{token_id}_{secret}"}

    def list(self) -> list[dict[str, Any]]:
        return [t.public() for t in self._db.tokens.values() if access.in_scope(t.project)]

    def revoke(self, name: str) -> None:
        """:raises NotFound: no such token. The next request with it is refused."""
        row = self._db.tokens.get(name)
        if row is None or not access.visible(row.project):
            raise NotFound(f"no token named '{name}'; see 'corral token list'")
        self._db.delete_token(name)

    def authenticate(self, presented: str) -> access.Principal:
        """The principal of a presented token.

        :raises Unauthorized: malformed, unknown (or revoked) or expired.
        """
        body = presented.removeprefix(PREFIX) if presented.startswith(PREFIX) else None
        token_id, _, secret = (body or "").partition("_")
        if not token_id or not secret or len(presented) > 200:
            raise Unauthorized("malformed token: expected crl_<id>_<secret>")
        row: TokenRow | None = self._db.token_by_id(token_id)
        if row is None or not hmac.compare_digest(row.hash, _digest(row.salt, secret)):
            raise Unauthorized("unknown or revoked token")
        if row.expires_at is not None and row.expires_at <= time.time():
            raise Unauthorized(f"token '{row.name}' expired at {time.ctime(row.expires_at)}")
        if row.role == "admin":  # over every project; new objects go to its own
            return access.Principal(row.name, row.role, None, home=row.project)
        return access.Principal(row.name, row.role, row.project, home=row.project)

    def audit(self, principal: access.Principal, resource: str, detail: dict[str, Any]
              ) -> None:
        """Record one mutating request as an ``audit`` event in the project it touched."""
        rec = self.rt.db.get_vm(resource) if resource else None
        project = principal.scope or (rec.project if rec is not None else principal.home)
        self.rt.db.add_event(resource or "-", "audit", {"who": principal.name, **detail},
                             project)


def _project(name: str, q: dict[str, int | None]) -> ProjectRow:
    return ProjectRow(name, q["max_vms"], q["max_cpus"], q["max_memory"], q["max_disk"])


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256((salt + secret).encode()).hexdigest()
