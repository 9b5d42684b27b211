"""The API's fast lane answers the hot routes exactly as FastAPI's routes do (a query string
sends a request down FastAPI's path instead), successes and errors alike."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from corral.api.app import create_app
from corral.service.manager import Manager

from .conftest import vm


@pytest.fixture
async def api(m: Manager) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(m, manage_lifecycle=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://corral") as client:
        yield client


def same(a: httpx.Response, b: httpx.Response) -> None:
    def strip(body: Any) -> Any:
        if isinstance(body, dict):
            return {k: v for k, v in body.items() if k != "uptime_seconds"}
        return [strip(x) for x in body] if isinstance(body, list) else body

    assert a.status_code == b.status_code, (a.text, b.text)
    assert a.headers["content-type"] == b.headers["content-type"]
    assert strip(a.json()) == strip(b.json())


async def test_lane_and_routes_answer_alike(m: Manager, api: httpx.AsyncClient) -> None:
    await m.vms.create(vm("a"), start=True, wait=True, timeout=5)
    await m.vms.create(vm("b"))
    same(await api.get("/v1/vms"), await api.get("/v1/vms?via=fastapi"))
    lane = await api.post("/v1/vms/a/pause")
    assert lane.json()["state"] == "paused"
    await m.vms.resume("a")
    same(lane, await api.post("/v1/vms/a/pause?via=fastapi"))
    same(await api.post("/v1/vms/a/pause"), await api.post("/v1/vms/a/pause?via=fastapi"))
    lane = await api.post("/v1/vms/a/resume")
    assert lane.json()["state"] == "running"
    await m.vms.pause("a")
    same(lane, await api.post("/v1/vms/a/resume?via=fastapi"))
    for path in ("/v1/vms/nope/pause", "/v1/vms/b/resume"):  # 404, 409
        same(await api.post(path), await api.post(path + "?via=fastapi"))
    bad = await api.post("/v1/vms/Bad_Name/pause")  # not the lane's: FastAPI checks it
    assert bad.status_code == 422
