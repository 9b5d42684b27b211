"""The REST API: routes parse the request into one service call and own no logic.

Errors from the one tree map onto statuses (``error.status``) with a JSON body
``{"error": kind, "message": one line, ...facts}``. The OpenAPI schema is at
``/openapi.json`` and browsable at ``/docs``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from corral.api.networks import routes as network_routes
from corral.domain.specs import VMCreate
from corral.errors import CorralError, InvalidSpec
from corral.service.manager import Manager

API = "/v1"


def _json(data: object) -> Response:
    """A JSON response without FastAPI's generic encoder pass: the service returns plain
    JSON-ready dicts, and the encoder would cost more than a pause itself."""
    return Response(json.dumps(data).encode(), media_type="application/json")


class SnapshotRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    memory: bool = False


class DiskCreateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    size: str | None = None
    format: str = "qcow2"
    source: str | None = Field(default=None, alias="from")


class AttachRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    disk: str
    readonly: bool = False
    iops: int | None = Field(default=None, ge=0)
    bps: int | None = Field(default=None, ge=0)


class BatchSpec(VMCreate):
    name: str = ""  # made up when empty


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    spec: BatchSpec | None = None
    argv: list[str] = Field(min_length=1)
    timeout: float = 600.0
    queue: bool = True


class ExecRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    argv: list[str] = Field(min_length=1)
    timeout: float = 60.0
    stdin: str | None = None  # base64
    env: list[str] | None = None


def create_app(manager: Manager, manage_lifecycle: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            await manager.open()
        try:
            yield
        finally:
            if manage_lifecycle:
                await manager.close()

    app = FastAPI(title="Corral", version="0.1.0", lifespan=lifespan,
                  description="A virtual machine manager on QEMU.")
    app.include_router(network_routes(manager))

    @app.exception_handler(CorralError)
    async def corral_error(_req: Request, err: CorralError) -> JSONResponse:
        return JSONResponse(err.to_dict(), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_req: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        spec_err = InvalidSpec(".".join(loc) or "body", str(first.get("msg", "invalid")))
        return JSONResponse(spec_err.to_dict(), status_code=422)

    @app.get(f"{API}/host")
    async def host_info() -> dict[str, Any]:
        return manager.host.info()

    @app.get(f"{API}/vms")
    async def list_vms() -> Response:
        return _json(manager.vms.list())

    @app.post(f"{API}/vms", status_code=201)
    async def create_vm(spec: VMCreate, start: bool = False, wait: bool = False,
                        timeout: float = 120, queue: bool = True) -> dict[str, Any]:
        return await manager.vms.create(spec.model_dump(exclude_unset=True), start=start,
                                        wait=wait, timeout=timeout, queue=queue)

    @app.get(f"{API}/vms/{{name}}")
    async def get_vm(name: str) -> Response:
        return _json(await manager.vms.get(name))

    @app.delete(f"{API}/vms/{{name}}", status_code=204)
    async def destroy_vm(name: str) -> None:
        await manager.vms.rm(name)

    @app.post(f"{API}/vms/{{name}}/start")
    async def start_vm(name: str, wait: bool = False, timeout: float = 120,
                       queue: bool = True) -> dict[str, Any]:
        return await manager.vms.start(name, wait=wait, timeout=timeout, queue=queue)

    @app.get(f"{API}/queue")
    async def queue_entries() -> list[dict[str, Any]]:
        return manager.host.queue()

    @app.post(f"{API}/batch")
    async def run_batch(req: BatchRequest) -> dict[str, Any]:
        spec = req.spec.model_dump(exclude_unset=True) if req.spec else {}
        return await manager.host.batch(spec, req.argv, req.timeout, req.queue)

    @app.get(f"{API}/trace")
    async def trace() -> list[dict[str, Any]]:
        return manager.host.trace()

    @app.post(f"{API}/vms/{{name}}/wait")
    async def wait_vm(name: str, timeout: float = 120) -> dict[str, Any]:
        return await manager.vms.wait_ready(name, timeout)

    @app.post(f"{API}/vms/{{name}}/pause")
    async def pause_vm(name: str) -> Response:
        return _json(await manager.vms.pause(name))

    @app.post(f"{API}/vms/{{name}}/resume")
    async def resume_vm(name: str) -> Response:
        return _json(await manager.vms.resume(name))

    @app.post(f"{API}/vms/{{name}}/shutdown")
    async def shutdown_vm(name: str, timeout: float = 60) -> dict[str, Any]:
        return await manager.vms.shutdown(name, timeout)

    @app.post(f"{API}/vms/{{name}}/stop")
    async def stop_vm(name: str, force: bool = True, timeout: float = 60) -> dict[str, Any]:
        return await manager.vms.stop(name, force=force, timeout=timeout)

    @app.post(f"{API}/vms/{{name}}/reboot")
    async def reboot_vm(name: str, wait: bool = False, timeout: float = 120) -> dict[str, Any]:
        return await manager.vms.reboot(name, wait=wait, timeout=timeout)

    @app.post(f"{API}/vms/{{name}}/save")
    async def save_vm(name: str, file: str | None = None) -> dict[str, Any]:
        return await manager.vms.save(name, file)

    @app.post(f"{API}/vms/{{name}}/restore")
    async def restore_vm(name: str, wait: bool = False, timeout: float = 120) -> dict[str, Any]:
        return await manager.vms.restore(name, wait=wait, timeout=timeout)

    @app.post(f"{API}/vms/{{name}}/snapshots", status_code=201)
    async def create_snapshot(name: str, req: SnapshotRequest) -> dict[str, Any]:
        return await manager.snapshots.create(name, req.name, memory=req.memory)

    @app.get(f"{API}/vms/{{name}}/snapshots")
    async def list_snapshots(name: str) -> list[dict[str, Any]]:
        return manager.snapshots.list(name)

    @app.post(f"{API}/vms/{{name}}/snapshots/{{snapshot}}/revert")
    async def revert_snapshot(name: str, snapshot: str) -> dict[str, Any]:
        return await manager.snapshots.revert(name, snapshot)

    @app.delete(f"{API}/vms/{{name}}/snapshots/{{snapshot}}", status_code=204)
    async def delete_snapshot(name: str, snapshot: str) -> None:
        await manager.snapshots.rm(name, snapshot)

    @app.post(f"{API}/disks", status_code=201)
    async def create_disk(req: DiskCreateRequest) -> dict[str, Any]:
        return await manager.disks.create(req.name, req.size, req.format, req.source)

    @app.get(f"{API}/disks")
    async def list_disks() -> list[dict[str, Any]]:
        return await manager.disks.list()

    @app.get(f"{API}/disks/{{disk}}")
    async def show_disk(disk: str) -> dict[str, Any]:
        return await manager.disks.get(disk)

    @app.post(f"{API}/disks/{{disk}}/resize")
    async def resize_disk(disk: str, size: str) -> dict[str, Any]:
        return await manager.disks.resize(disk, size)

    @app.delete(f"{API}/disks/{{disk}}", status_code=204)
    async def remove_disk(disk: str) -> None:
        await manager.disks.rm(disk)

    @app.post(f"{API}/vms/{{name}}/disks")
    async def attach_disk(name: str, req: AttachRequest) -> dict[str, Any]:
        return await manager.disks.attach(name, req.disk, readonly=req.readonly,
                                          iops=req.iops, bps=req.bps)

    @app.delete(f"{API}/vms/{{name}}/disks/{{disk}}")
    async def detach_disk(name: str, disk: str) -> dict[str, Any]:
        return await manager.disks.detach(name, disk)

    @app.post(f"{API}/vms/{{name}}/clone", status_code=201)
    async def clone_vm(name: str, new: str, full: bool = False,
                       snapshot: str | None = None) -> dict[str, Any]:
        return await manager.vms.clone(name, new, full=full, snapshot=snapshot)

    @app.post(f"{API}/vms/{{name}}/export")
    async def export_vm(name: str, file: str) -> dict[str, Any]:
        return await manager.vms.export(name, file)

    @app.post(f"{API}/import", status_code=201)
    async def import_vm(file: str, name: str | None = None) -> dict[str, Any]:
        return await manager.vms.import_(file, name)

    @app.get(f"{API}/vms/{{name}}/logs")
    async def vm_logs(name: str, offset: int = 0, limit: int = 1 << 20) -> dict[str, Any]:
        return manager.vms.logs(name, offset, limit)

    @app.post(f"{API}/vms/{{name}}/exec", response_model=None)
    async def exec_in_vm(name: str, req: ExecRequest,
                         stream: bool = False) -> dict[str, Any] | StreamingResponse:
        """Run a command in the guest; ``stream=true`` answers NDJSON lines as output comes:
        ``{"stdout": b64}``, ``{"stderr": b64}``, … then ``{"exitcode": N, "signal": S}``
        (or ``{"error": …}`` if it fails half-way)."""
        import base64

        stdin = base64.b64decode(req.stdin) if req.stdin is not None else None
        if not stream:
            return await manager.guest.exec(name, req.argv, req.timeout, stdin, req.env)
        events = manager.guest.exec_stream(name, req.argv, req.timeout, stdin)
        first = await anext(events)  # errors before any output are still a plain 4xx/5xx

        async def lines() -> AsyncIterator[bytes]:
            yield json.dumps(first).encode() + b"\n"
            try:
                async for event in events:
                    yield json.dumps(event).encode() + b"\n"
            except CorralError as err:
                yield json.dumps(err.to_dict()).encode() + b"\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @app.get(f"{API}/vms/{{name}}/files")
    async def read_guest_file(name: str, path: str) -> Response:
        data = await manager.guest.read_file(name, path)
        return Response(data, media_type="application/octet-stream")

    @app.put(f"{API}/vms/{{name}}/files")
    async def write_guest_file(name: str, path: str, request: Request) -> dict[str, Any]:
        return await manager.guest.write_file(name, path, await request.body())

    @app.get(f"{API}/vms/{{name}}/addresses")
    async def guest_addresses(name: str) -> list[dict[str, Any]]:
        return await manager.guest.addresses(name)

    @app.delete(f"{API}/images/{{image}}", status_code=204)
    async def remove_image(image: str) -> None:
        manager.images.rm(image)

    @app.get(f"{API}/events")
    async def events(since: int = 0, vm: str | None = None) -> list[dict[str, Any]]:
        return manager.vms.events(since, vm)

    return app
