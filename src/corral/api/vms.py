"""The REST routes of VMs: lifecycle, saved state, clones, export and import, logs.

Each route translates HTTP into one call of ``manager.vms``::

    GET    /v1/vms, /v1/vms/NAME
    POST   /v1/vms?start=&wait=&timeout=&queue=      {spec}   (run = create + start)
    DELETE /v1/vms/NAME
    POST   /v1/vms/NAME/{start,wait,pause,resume,shutdown,stop,reboot,save,restore}
    GET    /v1/vms/NAME/state                the saved state's bytes (a download)
    POST   /v1/vms/NAME/clone?new=NEW&full=&snapshot=
    POST   /v1/vms/NAME/export?live=         the export archive's bytes (a download)
    POST   /v1/import?upload=ID&name=        (or file=F inside the allowed host paths)
    GET    /v1/vms/NAME/logs?offset=&limit=

The daemon writes no file a client names: exports and saved states are answered as bytes,
which the client writes with its own rights; a ``file`` asking it to write one is refused.
"""

from __future__ import annotations

import json as _json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import Field

from corral.api.common import (
    Download,
    Name,
    OptName,
    Page,
    binary,
    json,
    ok,
    router,
    timeout,
)
from corral.api.names import NAME_PATTERN
from corral.domain.specs import MAX_CPUS, VMCreate
from corral.errors import PathNotAllowed
from corral.service.manager import Manager
from corral.views import VM, Logs

MAX_OFFSET = 1 << 50
MAX_LOG_CHUNK = 16 << 20

# the errors of a VM operation: no such VM, wrong state, too slow, the agent failed
VM_ERRORS = (404, 409, 504)
FilePath = Annotated[str | None, Query(min_length=1, max_length=4096)]
UploadRef = Annotated[str | None, Query(pattern=r"^[0-9a-f]{32}$",
                                        description="an upload id (POST /v1/uploads)")]
YEAR = 366 * 86400.0
Text40 = Annotated[str, Field(min_length=1, max_length=40)]


class CreateSpec(VMCreate):
    """A create request as the API accepts it: the spec's own rules, and every number finite
    and in range (what the values mean is checked by the service)."""

    name: str = Field(min_length=1, max_length=32,
                      json_schema_extra={"pattern": NAME_PATTERN})  # checked by check_name
    cpus: int = Field(1, ge=1, le=MAX_CPUS)
    memory: Text40 | Annotated[int, Field(ge=1, le=1 << 40)] = "256M"
    priority: int = Field(0, ge=-1_000_000, le=1_000_000)
    expected_runtime: Text40 | Annotated[float, Field(gt=0, le=YEAR, allow_inf_nan=False)] \
        | None = None
    cpu_weight: int | None = Field(None, ge=1, le=10000)
    cpu_max: Text40 | Annotated[float, Field(gt=0, le=100 * MAX_CPUS, allow_inf_nan=False)] \
        | None = None
    pin: list[Annotated[int, Field(ge=0, le=4095)]] | None = Field(None, max_length=4096)
    owner: str = Field("default", min_length=1, max_length=64)
    host: str | None = Field(None, min_length=1, max_length=64)
    on: dict[Annotated[str, Field(min_length=1, max_length=64)],
             Annotated[str, Field(max_length=128)]] | None = Field(None, max_length=32)
    group: str | None = Field(None, min_length=1, max_length=64)
    kernel: str | None = Field(None, min_length=1, max_length=4096, description=(
        "upload:ID (an upload, POST /v1/uploads), or a path inside the daemon's allowed "
        "host paths (setting paths.allowed); anything else is refused"))
    initrd: str | None = Field(None, min_length=1, max_length=4096,
                               description="as kernel")


def _writes_no_file(file: str, instead: str) -> PathNotAllowed:
    return PathNotAllowed("file", file, "the daemon writes no file a client names (a "
                          f"client writes it with its own rights from {instead})")


def routes(m: Manager) -> APIRouter:
    r = router("vms")
    _catalog(r, m)
    _lifecycle(r, m)
    _state_and_files(r, m)
    return r


def _catalog(r: APIRouter, m: Manager) -> None:
    """List, define (and maybe start), show and remove VMs."""

    @r.get("/vms", responses=ok(list[VM], 503))
    async def list_vms(page: Page, host: Annotated[str | None, Query(
            min_length=1, max_length=64)] = None) -> Response:
        """Every VM; in a cluster every host's (``host`` keeps one host's)."""
        if m.cluster is not None:
            return page.of(await m.cluster.list_vms(host))
        return page.of(m.vms.list() if host is None else [])

    @r.post("/vms", status_code=201, responses=ok(VM, 404, 409, 502, 504, status=201))
    async def create_vm(spec: CreateSpec, start: bool = False, wait: bool = False,
                        timeout: float = timeout(120.0, "readiness timeout"),
                        queue: bool = True) -> Response:
        """Define a VM; ``start`` also boots it (all or nothing: a failed start leaves
        nothing behind); ``from_snapshot`` makes it a warm start. In a cluster it is placed
        on a host first (``host``, ``on``, ``group``, ``anti_affinity``)."""
        if m.cluster is not None:
            return json(await m.cluster.create(spec.model_dump(exclude_unset=True),
                                               start=start, wait=wait, timeout=timeout,
                                               queue=queue), 201)
        return json(await m.vms.create(spec.model_dump(exclude_unset=True), start=start,
                                       wait=wait, timeout=timeout, queue=queue), 201)

    @r.get("/vms/{name}", responses=ok(VM, 404))
    async def get_vm(name: Name) -> Response:
        if m.cluster is not None:
            return json(await m.cluster.get(name))
        return json(await m.vms.get(name))

    @r.delete("/vms/{name}", status_code=204, responses=ok(None, 404, 409))
    async def rm_vm(name: Name) -> Response:
        """Remove a VM (in a cluster, also a request still waiting for room anywhere)."""
        if m.cluster is None or not await m.cluster.cancel_queued(name):
            await m.vms.rm(name)
        return Response(status_code=204)


def _lifecycle(r: APIRouter, m: Manager) -> None:
    """Run a VM: start, wait for it, pause, resume, shut down, stop, reboot."""

    @r.post("/vms/{name}/start", responses=ok(VM, *VM_ERRORS, 502))
    async def start_vm(name: Name, wait: bool = False,
                       timeout: float = timeout(120.0, "readiness timeout"),
                       queue: bool = True) -> Response:
        return json(await m.vms.start(name, wait=wait, timeout=timeout, queue=queue))

    @r.post("/vms/{name}/wait", responses=ok(VM, *VM_ERRORS, 502))
    async def wait_vm(name: Name, timeout: float = timeout(120.0)) -> Response:
        return json(await m.vms.wait_ready(name, timeout))

    @r.post("/vms/{name}/pause", responses=ok(VM, 404, 409))
    async def pause_vm(name: Name) -> Response:
        return json(await m.vms.pause(name))

    @r.post("/vms/{name}/resume", responses=ok(VM, 404, 409))
    async def resume_vm(name: Name) -> Response:
        return json(await m.vms.resume(name))

    @r.post("/vms/{name}/shutdown", responses=ok(VM, *VM_ERRORS))
    async def shutdown_vm(name: Name, timeout: float = timeout(60.0, "seconds before forcing")
                          ) -> Response:
        return json(await m.vms.shutdown(name, timeout))

    @r.post("/vms/{name}/stop", responses=ok(VM, *VM_ERRORS))
    async def stop_vm(name: Name, force: bool = True,
                      timeout: float = timeout(60.0, "seconds before forcing")) -> Response:
        return json(await m.vms.stop(name, force=force, timeout=timeout))

    @r.post("/vms/{name}/reboot", responses=ok(VM, *VM_ERRORS, 502))
    async def reboot_vm(name: Name, wait: bool = False,
                        timeout: float = timeout(120.0, "readiness timeout")) -> Response:
        return json(await m.vms.reboot(name, wait=wait, timeout=timeout))


def _state_and_files(r: APIRouter, m: Manager) -> None:
    """What a VM keeps and copies: saved state, clones, export and import, logs."""

    @r.post("/vms/{name}/save", responses=ok(VM, *VM_ERRORS))
    async def save_vm(name: Name, file: FilePath = None) -> Response:
        """Save the VM's state in its directory; ``GET .../state`` downloads a copy."""
        if file is not None:
            raise _writes_no_file(file, f"GET /v1/vms/{name}/state")
        return json(await m.vms.save(name))

    @r.get("/vms/{name}/state", response_class=Response,
           responses=binary("The saved state's bytes", "application/octet-stream", 404, 409))
    async def saved_state(name: Name) -> Response:
        @asynccontextmanager
        async def source() -> AsyncIterator[tuple[int, dict[str, str], AsyncIterator[bytes]]]:
            async with m.vms.saved_state(name) as (size, chunks):
                yield size, {}, chunks

        return Download(source)

    @r.post("/vms/{name}/restore", responses=ok(VM, *VM_ERRORS, 502))
    async def restore_vm(name: Name, wait: bool = False,
                         timeout: float = timeout(120.0, "readiness timeout")) -> Response:
        return json(await m.vms.restore(name, wait=wait, timeout=timeout))

    @r.post("/vms/{name}/clone", status_code=201, responses=ok(VM, 404, 409, status=201))
    async def clone_vm(name: Name, new: Annotated[str, Query(pattern=NAME_PATTERN)],
                       full: bool = False, snapshot: OptName = None) -> Response:
        return json(await m.vms.clone(name, new, full=full, snapshot=snapshot), 201)

    @r.post("/vms/{name}/export", response_class=Response,
            responses=binary("The export archive (tar)", "application/x-tar", 404, 409))
    async def export_vm(name: Name, live: bool = False, file: FilePath = None) -> Response:
        """The VM in one archive, sent as it is read; ``live`` exports a running VM too
        (paused meanwhile). The header ``X-Corral-Export`` says what it holds."""
        if file is not None:
            raise _writes_no_file(file, f"the answer of POST /v1/vms/{name}/export")

        @asynccontextmanager
        async def source() -> AsyncIterator[tuple[int, dict[str, str], AsyncIterator[bytes]]]:
            async with m.vms.export(name, live=live) as plan:
                yield plan.size, {"x-corral-export": _json.dumps(plan.info())}, plan.chunks()

        return Download(source, "application/x-tar")

    @r.post("/import", status_code=201, responses=ok(VM, 404, 409, status=201))
    async def import_vm(upload: UploadRef = None, file: FilePath = None,
                        name: OptName = None) -> Response:
        """Recreate a VM from an uploaded export (or a file in the allowed host paths)."""
        return json(await m.vms.import_(upload=upload, file=file, name=name), 201)

    @r.get("/vms/{name}/logs", responses=ok(Logs, 404))
    async def vm_logs(name: Name,
                      offset: Annotated[int, Query(ge=-MAX_OFFSET, le=MAX_OFFSET,
                                                   description="from this byte; negative: "
                                                               "from the end")] = 0,
                      limit: Annotated[int, Query(ge=1, le=MAX_LOG_CHUNK)] = 1 << 20
                      ) -> Response:
        return json(m.vms.logs(name, offset, limit))
