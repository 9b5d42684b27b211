"""The REST routes of guest images (``manager.images``)::

    GET    /v1/images
    POST   /v1/images               {name, upload (or file inside the allowed host paths),
                                     agent, root_device}: import a disk image
    DELETE /v1/images/IMAGE         refused while a VM uses it
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from corral.api.common import NAME_PATTERN, Name, Page, json, ok, router
from corral.service.manager import Manager
from corral.views import Image


class ImageImport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN, max_length=32)
    upload: str | None = Field(None, pattern=r"^[0-9a-f]{32}$",
                               description="an upload id (POST /v1/uploads)")
    file: str | None = Field(None, min_length=1, max_length=4096,
                             description="a file inside the allowed host paths")
    agent: bool = False
    root_device: Literal["virtio", "nvme"] = "virtio"


def routes(m: Manager) -> APIRouter:
    r = router("images")

    @r.post("/images", status_code=201, responses=ok(Image, 404, 409, status=201))
    async def import_image(req: ImageImport) -> Response:
        """Import a qcow2 or raw disk image (checked by qemu-img) as a Corral image."""
        return json(await m.images.import_(req.name, upload=req.upload, file=req.file,
                                           agent=req.agent, root_device=req.root_device), 201)

    @r.get("/images", responses=ok(list[Image]))
    async def list_images(page: Page) -> Response:
        return page.of(m.images.list())

    @r.delete("/images/{image}", status_code=204, responses=ok(None, 404, 409))
    async def rm_image(image: Name) -> Response:
        m.images.rm(image)
        return Response(status_code=204)

    return r
