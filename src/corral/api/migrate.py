"""The REST routes of live migration (see :mod:`corral.service.clustermigrate`, whose target
half is :mod:`corral.service.migratein`, and :mod:`corral.service.clusterdrain`); they join
the cluster's router (:mod:`corral.api.cluster`)."""

from __future__ import annotations

import asyncio
import json as _json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from corral.api.common import MAX_TIMEOUT, Name, json, ok
from corral.api.forward import call_peer
from corral.errors import CorralError, InvalidSpec
from corral.service import clusterdrain, clustermigrate
from corral.service.manager import Manager
from corral.views import VM
from corral.views.migrate import ArrivalAborted, DrainReport, MigrationCancelled, MigrationPlan

HOST = r"^[A-Za-z0-9_.-]+$"
Source = Annotated[str, Query(min_length=1, max_length=64, pattern=HOST)]


class MigrateRequest(BaseModel):
    """``corral migrate VM --to HOST``."""

    model_config = ConfigDict(extra="forbid")
    to: str = Field(min_length=1, max_length=64, pattern=HOST)
    postcopy: bool = False
    max_downtime: float = Field(0.3, gt=0, le=60, description="seconds the guest may stand "
                                                             "still at the switch")
    timeout: float = Field(600.0, gt=0, le=MAX_TIMEOUT, description="seconds before a "
                                                                     "migration that does "
                                                                     "not converge stops")
    bandwidth: int | None = Field(None, ge=1 << 20, le=1 << 40,
                                  description="bytes per second the stream may use")


def migrate_routes(r: APIRouter, m: Manager) -> None:
    @r.post("/vms/{name}/migrate", responses=ok(VM, 404, 409, 422, 503))
    async def migrate_vm(name: Name, req: MigrateRequest, stream: bool = False) -> Response:
        """Live-migrate a running VM to host ``to``; ``stream=true`` answers NDJSON lines:
        ``{"progress": {...}}`` as it goes, then ``{"vm": {...}}`` (or an error body)."""
        member = m.cluster_member()
        asked = clustermigrate.Asked(req.to, req.postcopy, req.max_downtime, req.timeout,
                                     req.bandwidth)
        if not stream:
            return json(await clustermigrate.migrate(member, name, asked, call_peer))
        lines: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        task = asyncio.create_task(clustermigrate.migrate(
            member, name, asked, call_peer, lambda p: lines.put_nowait({"progress": p})))
        first = asyncio.create_task(lines.get())
        await asyncio.wait({task, first}, return_when=asyncio.FIRST_COMPLETED)
        if not first.done():  # refused (or done) before any progress: a plain answer
            first.cancel()
            return json({"vm": await task})

        async def out() -> AsyncIterator[bytes]:
            yield _json.dumps(first.result()).encode() + b"\n"
            while not task.done() or not lines.empty():
                get = asyncio.create_task(lines.get())
                await asyncio.wait({task, get}, return_when=asyncio.FIRST_COMPLETED)
                if get.done():
                    yield _json.dumps(get.result()).encode() + b"\n"
                else:
                    get.cancel()
            try:
                yield _json.dumps({"vm": task.result()}).encode() + b"\n"
            except CorralError as err:
                yield _json.dumps(err.to_dict()).encode() + b"\n"

        return StreamingResponse(out(), media_type="application/x-ndjson")

    @r.post("/vms/{name}/migrate/cancel", responses=ok(MigrationCancelled, 404, 409, 422, 503))
    async def cancel_migration(name: Name) -> Response:
        """Stop the migration of the VM under way; it runs on where it was."""
        return json(await clustermigrate.cancel(m.cluster_member(), name))

    @r.post("/hosts/{host}/evacuate", responses=ok(DrainReport, 404, 422, 503))
    async def evacuate_host(host: Annotated[str, Path(min_length=1, max_length=64,
                                                      pattern=HOST)],
                            parallel: Annotated[int, Query(ge=1, le=16)] = 1) -> Response:
        """Drain a host: no new VMs, and each running VM live-migrated off it."""
        return json(await clusterdrain.drain(m.cluster_member(), host, parallel, call_peer))

    @r.post("/cluster/evacuate", responses=ok(DrainReport, 422, 503))
    async def evacuate_here(parallel: Annotated[int, Query(ge=1, le=16)] = 1) -> Response:
        """(Host to host) move this host's running VMs off it."""
        return json(await clusterdrain.evacuate(m.cluster_member(), parallel, call_peer))

    @r.post("/cluster/migrate-in/{name}", responses=ok(MigrationPlan, 404, 409, 422, 503))
    async def migrate_in(name: Name, source: Source, request: Request) -> Response:
        """(Host to host) make a place for VM ``name`` arriving from ``source``."""
        try:
            body = await request.json()
        except ValueError as err:
            raise InvalidSpec("body", "not JSON") from err
        if not isinstance(body, dict):
            raise InvalidSpec("body", "not a JSON object")
        return json(await m.cluster_member().arrivals.prepare(name, source, body))

    @r.post("/cluster/migrate-in/{name}/outcome", responses=ok(VM, 404, 422, 503))
    async def migrate_in_outcome(name: Name, source: Source) -> Response:
        """(Host to host) wait until VM ``name`` arrived; it as it runs here."""
        return json(await m.cluster_member().arrivals.outcome(name, 110.0))

    @r.delete("/cluster/migrate-in/{name}", responses=ok(ArrivalAborted, 422, 503))
    async def migrate_in_abort(name: Name, source: Source) -> Response:
        """(Host to host) give up the arrival of VM ``name``: remove what was made for it."""
        return json(await m.cluster_member().arrivals.abort(name))
