"""The REST routes of named disks; each is one call of ``manager.disks``::

    POST   /v1/disks                        {name, size, format, from}
    GET    /v1/disks, /v1/disks/DISK
    POST   /v1/disks/DISK/resize?size=SIZE
    DELETE /v1/disks/DISK
    POST   /v1/vms/NAME/disks               {disk, readonly, iops, bps}   (hot-plug if running)
    DELETE /v1/vms/NAME/disks/DISK
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from corral.api.common import NAME_PATTERN, Name, Page, json, ok, router
from corral.service.manager import Manager
from corral.views import VM, Disk

Size = Annotated[str, Field(min_length=1, max_length=40, description="e.g. 10G (a bare "
                                                                     "number is GiB)")]


class DiskCreateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(pattern=NAME_PATTERN, max_length=32)
    size: Size | None = None
    format: Literal["qcow2", "raw"] = "qcow2"
    source: str | None = Field(default=None, alias="from", pattern=NAME_PATTERN,
                               max_length=32)


class AttachRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    disk: str = Field(pattern=NAME_PATTERN, max_length=32)
    readonly: bool = False
    iops: int | None = Field(default=None, ge=0, le=1 << 40)
    bps: int | None = Field(default=None, ge=0, le=1 << 50)


def routes(m: Manager) -> APIRouter:
    r = router("disks")

    @r.post("/disks", status_code=201, responses=ok(Disk, 404, 409, 413, status=201))
    async def create_disk(req: DiskCreateRequest) -> Response:
        return json(await m.disks.create(req.name, req.size, req.format, req.source), 201)

    @r.get("/disks", responses=ok(list[Disk]))
    async def list_disks(page: Page) -> Response:
        return page.of(await m.disks.list())

    @r.get("/disks/{disk}", responses=ok(Disk, 404))
    async def show_disk(disk: Name) -> Response:
        return json(await m.disks.get(disk))

    @r.post("/disks/{disk}/resize", responses=ok(Disk, 404, 409))
    async def resize_disk(disk: Name, size: Annotated[str, Query(min_length=1, max_length=40)]
                          ) -> Response:
        return json(await m.disks.resize(disk, size))

    @r.delete("/disks/{disk}", status_code=204, responses=ok(None, 404, 409))
    async def rm_disk(disk: Name) -> Response:
        await m.disks.rm(disk)
        return Response(status_code=204)

    @r.post("/vms/{name}/disks", responses=ok(VM, 404, 409, 413))
    async def attach_disk(name: Name, req: AttachRequest) -> Response:
        return json(await m.disks.attach(name, req.disk, readonly=req.readonly, iops=req.iops,
                                         bps=req.bps))

    @r.delete("/vms/{name}/disks/{disk}", responses=ok(VM, 404, 409))
    async def detach_disk(name: Name, disk: Name) -> Response:
        return json(await m.disks.detach(name, disk))

    return r
