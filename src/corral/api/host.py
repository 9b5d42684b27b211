"""The REST routes of the host (``manager.host``) and of the event log (``manager.vms``)::

    GET  /v1/host                  CPUs, memory, accelerator and why, scheduler
    GET  /v1/queue                 VMs waiting for capacity, in start order
    POST /v1/batch                 {spec, argv, timeout, queue}: run a command in a fresh VM
    GET  /v1/trace                 every start request's arrival, start and end
    GET  /v1/events?since=&vm=     the event log after id ``since``
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from corral.api.common import MAX_PAGE, MAX_TIMEOUT, OptName, Page, json, ok, router
from corral.api.guest import MAX_ARGS, bounded
from corral.api.vms import CreateSpec
from corral.service.manager import Manager
from corral.views import BatchResult, Event, Host, QueueEntry, TraceEntry

MAX_EVENT_ID = (1 << 63) - 1


class BatchSpec(CreateSpec):
    name: str = Field("", max_length=32)  # made up when empty


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    spec: BatchSpec | None = None
    argv: list[str] = Field(min_length=1, max_length=MAX_ARGS)
    timeout: float = Field(600.0, gt=0, le=MAX_TIMEOUT, allow_inf_nan=False)
    queue: bool = True

    @field_validator("argv")
    @classmethod
    def _argv(cls, v: list[str]) -> list[str]:
        return bounded(v, "argv")


def routes(m: Manager) -> APIRouter:
    r = router("host")

    @r.get("/host", responses=ok(Host))
    async def host_info() -> Response:
        return json(m.host.info())

    @r.get("/queue", responses=ok(list[QueueEntry]))
    async def queue_entries(page: Page) -> Response:
        return page.of(m.host.queue())

    @r.post("/batch", responses=ok(BatchResult, 404, 409, 413, 502, 504))
    async def run_batch(req: BatchRequest) -> Response:
        spec = req.spec.model_dump(exclude_unset=True) if req.spec else {}
        return json(await m.host.batch(spec, req.argv, req.timeout, req.queue))

    @r.get("/trace", responses=ok(list[TraceEntry]))
    async def trace(page: Page) -> Response:
        return page.of(m.host.trace())

    @r.get("/events", responses=ok(list[Event]))
    async def events(since: Annotated[int, Query(ge=0, le=MAX_EVENT_ID)] = 0,
                     vm: OptName = None, project: OptName = None,
                     limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = MAX_PAGE) -> Response:
        """The event log after id ``since`` (a page of ``limit``): ``vm``'s only, or
        ``project``'s only (a token sees its own project's only)."""
        return json(m.vms.events(since, vm, limit, project))

    return r
