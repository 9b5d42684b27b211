"""The REST routes of stacks (``manager.stacks``) and of the daemon's settings
(``manager.host``)::

    POST   /v1/stacks/plan                 {file, text, name}: what apply would do
    POST   /v1/stacks/apply?dry_run=       {file, text, name}: NDJSON progress events
    GET    /v1/stacks, /v1/stacks/NAME     the stacks and the resources each owns
    DELETE /v1/stacks/NAME                 NDJSON progress events of the removal
    GET    /v1/stacks-schema               the JSON Schema of a stack file
    GET    /v1/config                      every setting in force and where it came from
    PUT    /v1/config/KEY                  {value}: change a live setting now

A stack file's errors are 422 answers naming the file, the line and the field. An apply's
events are ``plan`` (first, before anything is made), then ``begin``, ``done``,
``failed`` or ``skipped`` per resource, and ``end`` (``ok``, and ``failed``/``error`` when
a resource failed).
"""

from __future__ import annotations

import json as _json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from corral.api.common import NAME_PATTERN, Name, json, ok, router
from corral.service.manager import Manager
from corral.views import Config, SettingChange, Stack, StackEvent, StackPlan

# characters: even escaped as JSON (12 bytes a character at worst) the body stays under the
# 1 MiB limit, so a too long file is a 422 naming the field, not a cut connection
MAX_STACK = 64 * 1024


class StackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: str = Field("stack.yaml", min_length=1, max_length=1024,
                      description="the file's name, for errors and the default stack name")
    text: str = Field(max_length=MAX_STACK, description="the YAML of the stack file")
    name: str | None = Field(None, pattern=NAME_PATTERN, max_length=32)


class SettingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: str = Field(max_length=4096)


def _ndjson(events: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    async def lines() -> AsyncIterator[bytes]:
        async for event in events:
            yield _json.dumps(event).encode() + b"\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")


def _events_doc() -> dict[int | str, dict[str, Any]]:
    doc = ok(StackEvent, 404, 409, 413)  # one event per line
    doc[200]["content"]["application/x-ndjson"] = doc[200]["content"]["application/json"]
    return doc


def routes(m: Manager) -> APIRouter:
    r = router("stacks")

    @r.post("/stacks/plan", responses=ok(StackPlan, 404, 413))
    async def plan_stack(req: StackRequest) -> Response:
        return json(await m.stacks.plan(req.text, req.file, req.name))

    @r.post("/stacks/apply", response_model=None, responses=_events_doc())
    async def apply_stack(req: StackRequest, dry_run: bool = False) -> Response:
        return _ndjson(await m.stacks.apply(req.text, req.file, req.name, dry_run))

    @r.get("/stacks", responses=ok(list[Stack]))
    async def list_stacks() -> Response:
        return json(m.stacks.list())

    @r.get("/stacks-schema", responses={**ok(None), 200: {
        "description": "The JSON Schema of a stack file",
        "content": {"application/json": {"schema": {"type": "object"}}}}})
    async def stack_schema() -> Response:
        return json(m.stacks.schema())

    @r.get("/stacks/{name}", responses=ok(Stack, 404))
    async def show_stack(name: Name) -> Response:
        return json(m.stacks.get(name))

    @r.delete("/stacks/{name}", response_model=None, responses=_events_doc())
    async def rm_stack(name: Name) -> Response:
        return _ndjson(await m.stacks.rm(name))

    @r.get("/config", responses=ok(Config))
    async def config() -> Response:
        return json(m.host.config())

    @r.put("/config/{key}", responses=ok(SettingChange))
    async def set_setting(key: Annotated[str, PathParam(pattern=r"^[a-z0-9_.\-]{1,64}$")],
                          req: SettingRequest) -> Response:
        return json(m.host.set(key, req.value))

    return r
