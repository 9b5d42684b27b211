"""The REST routes that act inside a guest through its agent (``manager.guest``)::

    POST /v1/vms/NAME/exec?stream=       {argv, timeout, stdin (base64), env}
    GET  /v1/vms/NAME/files?path=P       the file's bytes
    PUT  /v1/vms/NAME/files?path=P       the body is the file (at most 256 MiB)
    PUT  /v1/vms/NAME/files?path=P&upload=ID   the file of an upload (uploads.max_size)
    GET  /v1/vms/NAME/addresses

A command's argv is bounded (:data:`MAX_ARGS` arguments, :data:`MAX_ARGV_BYTES` in all), as
its environment is: the guest agent holds it all in memory.
"""

from __future__ import annotations

import base64
import binascii
import json as _json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from corral.api.common import MAX_TIMEOUT, Name, json, ok, router
from corral.errors import CorralError
from corral.service.manager import Manager
from corral.views import ExecResult, FileWritten, Interface

MAX_ARGS = 4096
MAX_ARGV_BYTES = 256 << 10
MAX_ENV = 1024
GuestPath = Annotated[str, Query(min_length=1, max_length=4096,
                                 description="an absolute path in the guest")]
UploadRef = Annotated[str | None, Query(pattern=r"^[0-9a-f]{32}$",
                                        description="an upload id (POST /v1/uploads)")]


def bounded(values: list[str], what: str) -> list[str]:
    """``values`` (an argv, an environment), unless too large in all or holding a NUL."""
    if sum(len(v.encode()) + 1 for v in values) > MAX_ARGV_BYTES:
        raise ValueError(f"{what} is larger than {MAX_ARGV_BYTES} bytes in all")
    if any("\0" in v for v in values):
        raise ValueError(f"{what} holds a NUL character")
    return values


class ExecRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    argv: list[str] = Field(min_length=1, max_length=MAX_ARGS)
    timeout: float = Field(60.0, gt=0, le=MAX_TIMEOUT, allow_inf_nan=False)
    stdin: str | None = Field(None, description="base64")
    env: list[str] | None = Field(None, max_length=MAX_ENV)

    @field_validator("argv")
    @classmethod
    def _argv(cls, v: list[str]) -> list[str]:
        return bounded(v, "argv")

    @field_validator("env")
    @classmethod
    def _env(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else bounded(v, "env")

    @field_validator("stdin")
    @classmethod
    def _stdin(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                base64.b64decode(v, validate=True)
            except (binascii.Error, ValueError) as err:
                raise ValueError("stdin is not base64") from err
        return v

    def stdin_bytes(self) -> bytes | None:
        return None if self.stdin is None else base64.b64decode(self.stdin, validate=True)


def routes(m: Manager) -> APIRouter:
    r = router("guest")

    @r.post("/vms/{name}/exec", response_model=None,
            responses=ok(ExecResult, 404, 409, 413, 502, 504))
    async def exec_in_vm(name: Name, req: ExecRequest, stream: bool = False) -> Response:
        """Run a command in the guest; ``stream=true`` answers NDJSON lines as output comes:
        ``{"stdout": b64}``, ``{"stderr": b64}``, … then ``{"exitcode": N, "signal": S}``
        (or an error body if it fails half-way)."""
        if not stream:
            return json(await m.guest.exec(name, req.argv, req.timeout, req.stdin_bytes(),
                                           req.env))
        events = m.guest.exec_stream(name, req.argv, req.timeout, req.stdin_bytes())
        first = await anext(events)  # errors before any output are still a plain 4xx/5xx

        async def lines() -> AsyncIterator[bytes]:
            yield _json.dumps(first).encode() + b"\n"
            try:
                async for event in events:
                    yield _json.dumps(event).encode() + b"\n"
            except CorralError as err:
                yield _json.dumps(err.to_dict()).encode() + b"\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @r.get("/vms/{name}/files", response_class=Response, responses={
        **ok(None, 404, 409, 502, 504),
        200: {"content": {"application/octet-stream": {"schema": {"type": "string",
                                                                   "format": "binary"}}},
              "description": "The file's bytes"}})
    async def read_file(name: Name, path: GuestPath) -> Response:
        data = await m.guest.read_file(name, path)
        return Response(data, media_type="application/octet-stream")

    @r.put("/vms/{name}/files", responses=ok(FileWritten, 404, 409, 413, 502, 504))
    async def write_file(name: Name, path: GuestPath, request: Request,
                         upload: UploadRef = None) -> Response:
        """The body is the file; or, for a larger one, ``upload`` names an upload (it is
        used up) and the body is empty."""
        if upload is None:
            return json(await m.guest.write_file(name, path, await request.body()))
        source = m.uploads.path(upload)
        try:
            return json(await m.guest.write_file(name, path, source))
        finally:
            source.unlink(missing_ok=True)

    @r.get("/vms/{name}/addresses", responses=ok(list[Interface], 404, 409, 502, 504))
    async def addresses(name: Name) -> Response:
        return json(await m.guest.addresses(name))

    return r
