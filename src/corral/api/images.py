"""The REST routes of guest images (``manager.images``)::

    GET    /v1/images
    DELETE /v1/images/IMAGE         refused while a VM uses it
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from corral.api.common import Name, Page, ok, router
from corral.service.manager import Manager
from corral.views import Image


def routes(m: Manager) -> APIRouter:
    r = router("images")

    @r.get("/images", responses=ok(list[Image]))
    async def list_images(page: Page) -> Response:
        return page.of(m.images.list())

    @r.delete("/images/{image}", status_code=204, responses=ok(None, 404, 409))
    async def rm_image(image: Name) -> Response:
        m.images.rm(image)
        return Response(status_code=204)

    return r
