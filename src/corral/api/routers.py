"""The REST routes of virtual routers and their port forwards (``manager.routers``)::

    POST   /v1/routers                           {name, uplink}
    GET    /v1/routers, /v1/routers/NAME
    DELETE /v1/routers/NAME?force=               force: detach its legs and forwards first;
                                                 answers 200 {"removed": [...]} (else 204)
    POST   /v1/routers/NAME/networks             {network}
    DELETE /v1/routers/NAME/networks/NET
    GET    /v1/forwards
    POST   /v1/routers/NAME/forwards             {proto, host_port, vm, port}
    DELETE /v1/routers/NAME/forwards/PROTO/PORT
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from corral.api.common import NAME_PATTERN, Name, Page, json, ok, router
from corral.service.manager import Manager
from corral.views import Forward, Removed, Router

Port = Annotated[int, Field(ge=1, le=65535)]


class RouterCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN, max_length=32)
    uplink: bool = False


class LegRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    network: str = Field(pattern=NAME_PATTERN, max_length=32)


class ForwardRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    proto: Literal["tcp", "udp"] = "tcp"
    host_port: Port
    vm: str = Field(pattern=NAME_PATTERN, max_length=32)
    port: Port


def routes(m: Manager) -> APIRouter:
    r = router("routers")

    @r.post("/routers", status_code=201, responses=ok(Router, 403, 409, 413, status=201))
    async def create_router(req: RouterCreate) -> Response:
        return json(await m.routers.create(req.name, uplink=req.uplink), 201)

    @r.get("/routers", responses=ok(list[Router]))
    async def list_routers(page: Page) -> Response:
        return page.of(m.routers.list())

    @r.get("/routers/{name}", responses=ok(Router, 404))
    async def show_router(name: Name) -> Response:
        return json(m.routers.get(name))

    @r.delete("/routers/{name}", status_code=204, responses={
        **ok(Removed, 403, 404, 409), 204: {"description": "Removed"}})
    async def rm_router(name: Name, force: bool = False) -> Response:
        removed = await m.routers.rm(name, force=force)
        return json({"removed": removed}) if force else Response(status_code=204)

    @r.post("/routers/{name}/networks", responses=ok(Router, 403, 404, 409, 413))
    async def attach_network(name: Name, req: LegRequest) -> Response:
        return json(await m.routers.attach(name, req.network))

    @r.delete("/routers/{name}/networks/{network}", responses=ok(Router, 403, 404, 409))
    async def detach_network(name: Name, network: Name) -> Response:
        return json(await m.routers.detach(name, network))

    @r.get("/forwards", responses=ok(list[Forward]))
    async def list_forwards(page: Page) -> Response:
        return page.of(m.routers.forwards())

    @r.post("/routers/{name}/forwards", status_code=201,
            responses=ok(Forward, 403, 404, 409, 413, status=201))
    async def add_forward(name: Name, req: ForwardRequest) -> Response:
        return json(await m.routers.add_forward(name, req.proto, req.host_port, req.vm,
                                                req.port), 201)

    @r.delete("/routers/{name}/forwards/{proto}/{host_port}", status_code=204,
              responses=ok(None, 403, 404))
    async def rm_forward(name: Name, proto: Literal["tcp", "udp"],
                         host_port: Annotated[int, PathParam(ge=1, le=65535)]) -> Response:
        await m.routers.rm_forward(name, proto, host_port)
        return Response(status_code=204)

    return r
