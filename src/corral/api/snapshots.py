"""The REST routes of snapshots (a tree per VM); each is one call of ``manager.snapshots``::

    POST   /v1/vms/NAME/snapshots                      {name, memory, template}
    GET    /v1/vms/NAME/snapshots                      the tree, depth-first
    POST   /v1/vms/NAME/snapshots/SNAPSHOT/revert
    DELETE /v1/vms/NAME/snapshots/SNAPSHOT
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from corral.api.common import NAME_PATTERN, Name, Page, json, ok, router
from corral.service.manager import Manager
from corral.views import VM, Snapshot


class SnapshotRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN, max_length=32)
    memory: bool = False
    template: bool = False  # make the warm-start template now (needs memory)


def routes(m: Manager) -> APIRouter:
    r = router("snapshots")

    @r.post("/vms/{name}/snapshots", status_code=201,
            responses=ok(Snapshot, 404, 409, 413, 504, status=201))
    async def create_snapshot(name: Name, req: SnapshotRequest) -> Response:
        return json(await m.snapshots.create(name, req.name, memory=req.memory,
                                                 template=req.template), 201)

    @r.get("/vms/{name}/snapshots", responses=ok(list[Snapshot], 404))
    async def list_snapshots(name: Name, page: Page) -> Response:
        return page.of(m.snapshots.list(name))

    @r.post("/vms/{name}/snapshots/{snapshot}/revert", responses=ok(VM, 404, 409, 504))
    async def revert_snapshot(name: Name, snapshot: Name) -> Response:
        return json(await m.snapshots.revert(name, snapshot))

    @r.delete("/vms/{name}/snapshots/{snapshot}", status_code=204,
              responses=ok(None, 404, 409, 504))
    async def rm_snapshot(name: Name, snapshot: Name) -> Response:
        await m.snapshots.rm(name, snapshot)
        return Response(status_code=204)

    return r
