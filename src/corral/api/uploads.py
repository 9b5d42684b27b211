"""The REST routes of uploads: files a client reads with its own rights and sends, so the
daemon never opens a path a client names (``manager.uploads``)::

    POST   /v1/uploads              the body is the file (at most the uploads.max_size setting)
    DELETE /v1/uploads/ID           drop an upload no request has used

A request then names the upload: ``"kernel": "upload:ID"``, ``"initrd": "upload:ID"``, a
disk ``{"upload": "ID"}``, ``POST /v1/images {"upload": "ID"}``, ``POST /v1/import?upload=ID``.
Each upload is used once; one left unused is removed after the uploads.ttl setting.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from corral.api.common import json, ok, router
from corral.service.manager import Manager
from corral.views import Upload

UploadId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", min_length=32, max_length=32,
                               description="an upload id (32 hex digits)")]


def routes(m: Manager) -> APIRouter:
    r = router("uploads")

    @r.post("/uploads", status_code=201, responses=ok(Upload, 413, status=201),
            openapi_extra={"requestBody": {"required": True, "content": {
                "application/octet-stream": {"schema": {"type": "string",
                                                        "format": "binary"}}}}})
    async def upload(request: Request) -> Response:
        """Receive a file, streamed to disk as it arrives; answers its id, size and
        SHA-256 (check it against the file sent)."""
        return json(await m.uploads.receive(request.stream()), 201)

    @r.delete("/uploads/{upload_id}", status_code=204, responses=ok(None, 404))
    async def rm_upload(upload_id: UploadId) -> Response:
        m.uploads.rm(upload_id)
        return Response(status_code=204)

    return r
