"""The REST routes of projects, API tokens and the caller's own identity::

    GET    /v1/whoami                       who this request acts as
    GET    /v1/projects, /v1/projects/NAME  quotas and usage (a token: its own project)
    POST   /v1/projects                     {name, max_vms, max_cpus, max_memory, max_disk}
    PATCH  /v1/projects/NAME                {the quotas to change}
    DELETE /v1/projects/NAME
    GET    /v1/tokens
    POST   /v1/tokens                       {name, role, project, expires}  (secret shown once)
    DELETE /v1/tokens/NAME                  revoke: the next request with it is refused

Who may call which is decided in one place, :mod:`corral.api.auth`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from corral.api.common import NAME_PATTERN, Name, Page, json, ok, router
from corral.service import access
from corral.service.manager import Manager
from corral.views import Principal, Project, Token, TokenCreated

Count = Annotated[int, Field(ge=0, le=1 << 20)]
Size = Annotated[str, Field(min_length=1, max_length=40, description="e.g. 16G")] | \
    Annotated[int, Field(ge=1, le=1 << 60, description="bytes")]


class Quotas(BaseModel):
    """Quotas: absent (or null) is no limit."""

    model_config = ConfigDict(extra="forbid")
    max_vms: Count | None = None
    max_cpus: Count | None = None
    max_memory: Size | None = None
    max_disk: Size | None = None


class ProjectCreate(Quotas):
    name: str = Field(pattern=NAME_PATTERN, min_length=1, max_length=32)


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN, min_length=1, max_length=32)
    role: Literal["admin", "operator", "viewer"]
    project: str = Field(access.DEFAULT_PROJECT, pattern=NAME_PATTERN, max_length=32)
    expires: str | None = Field(None, min_length=1, max_length=20,
                                description="lifetime, e.g. 12h, 30d, 2w (none: never)")


def routes(m: Manager) -> APIRouter:
    r = router("access")

    @r.get("/whoami", responses=ok(Principal))
    async def whoami() -> Response:
        p = access.current()
        return json({"name": p.name, "role": p.role, "project": p.project,
                     "selected": p.selected, "home": p.home})

    @r.get("/projects", responses=ok(list[Project]))
    async def list_projects(page: Page) -> Response:
        return page.of(await m.projects.list())

    @r.post("/projects", status_code=201, responses=ok(Project, 409, status=201))
    async def create_project(req: ProjectCreate) -> Response:
        return json(await m.projects.create(req.name, req.model_dump(exclude={"name"})), 201)

    @r.get("/projects/{name}", responses=ok(Project, 404))
    async def show_project(name: Name) -> Response:
        return json(await m.projects.get(name))

    @r.patch("/projects/{name}", responses=ok(Project, 404))
    async def set_quotas(name: Name, req: Quotas) -> Response:
        return json(await m.projects.set_quotas(name, req.model_dump(exclude_unset=True)))

    @r.delete("/projects/{name}", status_code=204, responses=ok(None, 404, 409))
    async def rm_project(name: Name) -> Response:
        m.projects.rm(name)
        return Response(status_code=204)

    @r.get("/tokens", responses=ok(list[Token]))
    async def list_tokens(page: Page) -> Response:
        return page.of(m.tokens.list())

    @r.post("/tokens", status_code=201, responses=ok(TokenCreated, 404, 409, status=201))
    async def create_token(req: TokenCreate) -> Response:
        return json(m.tokens.create(req.name, req.role, req.project, req.expires), 201)

    @r.delete("/tokens/{name}", status_code=204, responses=ok(None, 404))
    async def revoke_token(name: Name) -> Response:
        m.tokens.revoke(name)
        return Response(status_code=204)

    return r
