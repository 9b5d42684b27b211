"""The views of tokens, projects and who a request acts as."""

from __future__ import annotations

from corral.views._typed import TypedDict


class Quotas(TypedDict):
    max_vms: int | None
    max_cpus: int | None
    max_memory: int | None
    max_disk: int | None


class Project(TypedDict):
    name: str
    created_at: float
    quotas: Quotas
    usage: dict[str, int]


class Token(TypedDict):
    name: str
    id: str
    role: str
    project: str
    created_at: float
    expires_at: float | None


class TokenCreated(Token):
    secret: str


class Principal(TypedDict):
    """Who a request acts as: ``project`` None for admins (every project)."""

    name: str
    role: str
    project: str | None
    selected: str | None
    home: str
