"""The REST routes of the host (``manager.host``; the event log is :mod:`corral.api.events`)::

    GET  /v1/host                  CPUs, memory, accelerator and why, scheduler
    GET  /v1/queue                 VMs waiting for capacity, in start order
    POST /v1/batch                 {spec, argv, timeout, queue}: run a command in a fresh VM
    GET  /v1/trace                 every start request's arrival, start and end
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from corral.api.common import MAX_TIMEOUT, Page, json, ok, router
from corral.api.guest import MAX_ARGS, bounded
from corral.api.vms import CreateSpec
from corral.service.manager import Manager
from corral.views import BatchResult, Host, QueueEntry, TraceEntry


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

    return r
