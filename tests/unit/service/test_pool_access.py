"""Warm pools and the fast lane behind the authorization seam, on the fake engine: a pool
belongs to a project like a VM (other projects' pools are not found, its clones are VMs of
its project and count against its quotas), the fast lane answers as the caller's token and
project allow and is counted in the metrics, and the gate holds requests with tokens until
the service is open."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.api.app import create_app
from corral.api.opening import Opening
from corral.service.manager import Manager

from .conftest import vm


@pytest.fixture
def home(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CORRAL_HOST_CPUS", "12")
    monkeypatch.setenv("CORRAL_HOST_MEMORY", "12G")
    return home


@pytest.fixture
async def apis(m: Manager) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    local = httpx.AsyncClient(transport=httpx.ASGITransport(
        app=create_app(m, manage_lifecycle=False)), base_url="http://corral")
    remote = httpx.AsyncClient(transport=httpx.ASGITransport(
        app=create_app(m, manage_lifecycle=False, remote=True)), base_url="https://corral")
    async with local, remote:
        yield local, remote


async def _token(local: httpx.AsyncClient, name: str, role: str, project: str
                 ) -> dict[str, str]:
    r = await local.post("/v1/tokens", json={"name": name, "role": role, "project": project})
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['secret']}"}


async def _golden(remote: httpx.AsyncClient, head: dict[str, str], name: str) -> None:
    r = await remote.post("/v1/vms?start=true&wait=true&timeout=5", json=vm(name),
                          headers=head)
    assert r.status_code == 201, r.text
    r = await remote.post(f"/v1/vms/{name}/snapshots", headers=head,
                          json={"name": "base", "memory": True, "template": True})
    assert r.status_code == 201, r.text


async def _pool(remote: httpx.AsyncClient, head: dict[str, str], name: str,
                until: Any, within: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        view: dict[str, Any] = (await remote.get(f"/v1/pools/{name}", headers=head)).json()
        if until(view) or time.monotonic() > deadline:
            return view
        await asyncio.sleep(0.02)


async def test_a_pool_belongs_to_its_project(
        m: Manager, apis: tuple[httpx.AsyncClient, httpx.AsyncClient]) -> None:
    local, remote = apis
    for p in ("alpha", "beta"):
        assert (await local.post("/v1/projects", json={"name": p})).status_code == 201
    a = await _token(local, "op-a", "operator", "alpha")
    b = await _token(local, "op-b", "operator", "beta")
    viewer = await _token(local, "view-a", "viewer", "alpha")
    await _golden(remote, a, "gold")
    r = await remote.post("/v1/pools", headers=a,
                          json={"name": "py", "from_snapshot": "gold:base", "size": 2})
    assert r.status_code == 201 and r.json()["project"] == "alpha", r.text
    view = await _pool(remote, a, "py", lambda v: v["free"] == 2 and not v["filling"])
    assert view["free"] == 2, view
    clones = {v["name"]: v["project"] for v in (await local.get("/v1/vms")).json()}
    assert all(clones[c] == "alpha" for c in view["clones"]), clones
    # beta: no pool to see, take from, resize or remove; and no way to a pool of alpha's
    assert (await remote.get("/v1/pools", headers=b)).json() == []
    for method, url, body in (("GET", "/v1/pools/py", None),
                              ("POST", "/v1/pools/py/take", {"name": "stolen"}),
                              ("POST", "/v1/pools/py/resize", {"size": 1}),
                              ("POST", "/v1/pools/py/batch", {"argv": ["true"]}),
                              ("DELETE", "/v1/pools/py", None)):
        r = await remote.request(method, url, headers=b, json=body)
        assert r.status_code == 404 and r.json()["kind"] == "not_found", (method, url, r.text)
    r = await remote.post("/v1/pools", headers=b,
                          json={"name": "steal", "from_snapshot": "gold:base", "size": 1})
    assert r.status_code == 404, r.text
    # a viewer reads the pool, an operator of its project takes from it
    assert (await remote.get("/v1/pools/py", headers=viewer)).status_code == 200
    r = await remote.post("/v1/pools/py/take", headers=viewer, json={"name": "job"})
    assert r.status_code == 403, r.text
    r = await remote.post("/v1/pools/py/take", headers=a, json={"name": "job"})
    assert r.status_code == 201 and r.json()["project"] == "alpha", r.text
    assert r.json()["pool"]["hit"] and r.json()["state"] == "running"
    handed = [e for e in (await local.get("/v1/events?project=alpha")).json()
              if e["kind"] == "handed_out"]
    assert [e["vm"] for e in handed] == ["job"]
    # the local admin sees it, and a project it selects
    assert [p["name"] for p in (await local.get("/v1/pools")).json()] == ["py"]
    r = await local.get("/v1/pools", headers={"X-Corral-Project": "beta"})
    assert r.json() == []
    assert (await remote.delete("/v1/pools/py", headers=a)).status_code == 200
    for name in ("job", "gold"):
        assert (await local.delete(f"/v1/vms/{name}")).status_code == 204


async def test_pool_clones_count_against_the_quota(
        m: Manager, apis: tuple[httpx.AsyncClient, httpx.AsyncClient]) -> None:
    local, remote = apis
    r = await local.post("/v1/projects", json={"name": "q", "max_vms": 3})
    assert r.status_code == 201, r.text
    q = await _token(local, "op-q", "operator", "q")
    await _golden(remote, q, "gold")
    r = await remote.post("/v1/pools", headers=q,
                          json={"name": "py", "from_snapshot": "gold:base", "size": 4})
    assert r.status_code == 201, r.text
    view = await _pool(remote, q, "py", lambda v: v["note"] and v["free"] == 2)
    assert view["free"] == 2 and "max_vms" in view["note"], view
    usage = (await remote.get("/v1/projects/q", headers=q)).json()["usage"]
    assert usage["vms"] == 3, usage
    r = await remote.post("/v1/vms", json=vm("extra"), headers=q)
    assert r.status_code == 409 and r.json()["facts"]["quota"] == "max_vms", r.text
    assert (await remote.delete("/v1/pools/py", headers=q)).status_code == 200
    assert (await local.delete("/v1/vms/gold")).status_code == 204


async def test_fast_lane_answers_as_the_token_may_and_is_counted(
        m: Manager, apis: tuple[httpx.AsyncClient, httpx.AsyncClient]) -> None:
    local, remote = apis
    for p in ("alpha", "beta"):
        assert (await local.post("/v1/projects", json={"name": p})).status_code == 201
    a = await _token(local, "op-a", "operator", "alpha")
    b = await _token(local, "op-b", "operator", "beta")
    viewer = await _token(local, "view-a", "viewer", "alpha")
    for name, head in (("a1", a), ("a2", a), ("b1", b)):
        r = await remote.post("/v1/vms?start=true&wait=true&timeout=5", json=vm(name),
                              headers=head)
        assert r.status_code == 201, r.text
    r = await remote.get("/v1/vms", headers=a)  # the lane: no query
    assert [v["name"] for v in r.json()] == ["a1", "a2"]
    assert r.headers["x-total-count"] == "2"
    assert [v["name"] for v in (await remote.get("/v1/vms", headers=b)).json()] == ["b1"]
    assert (await remote.get("/v1/vms")).status_code == 401
    assert (await remote.post("/v1/vms/b1/pause", headers=a)).status_code == 404
    assert (await remote.post("/v1/vms/a1/pause", headers=viewer)).status_code == 403
    r = await remote.post("/v1/vms/a1/pause", headers=a)
    assert r.status_code == 200 and r.json()["state"] == "paused", r.text
    want = {("a1", "op-a", 200), ("a1", "view-a", 403), ("b1", "op-a", 404)}
    deadline = time.monotonic() + 5  # audit records are written behind the answer
    while True:
        audit = {(e["vm"], e["detail"]["who"], e["detail"]["status"])
                 for e in (await local.get("/v1/events?project=alpha")).json()
                 if e["kind"] == "audit"
                 and e["detail"]["action"] == "POST /v1/vms/{name}/pause"}
        if audit == want or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert audit == want
    text = (await local.get("/metrics")).text
    assert 'route="/v1/vms/{name}/pause"' in text and 'route="/v1/vms",' in text, text
    # the local admin scrapes every VM; a project's token, its project's alone
    scraped = {who: {line.split('vm="')[1].split('"')[0] for line in text.splitlines()
                     if line.startswith("corral_vm_vcpus{")}
               for who, text in (("local", text),
                                 ("a", (await remote.get("/metrics", headers=viewer)).text),
                                 ("b", (await remote.get("/metrics", headers=b)).text))}
    assert scraped == {"local": {"a1", "a2", "b1"}, "a": {"a1", "a2"}, "b": {"b1"}}
    for name in ("a1", "a2", "b1"):
        assert (await local.delete(f"/v1/vms/{name}")).status_code == 204


async def test_the_gate_holds_token_requests_until_the_service_is_open(
        home: Path, m: Manager) -> None:
    """The gate sits before the Guard: a request with a token that comes while the service
    opens waits for it (the Guard reads the tokens the open loads), and then is answered."""
    local = create_app(m, manage_lifecycle=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=local),
                                 base_url="http://corral") as admin:
        head = await _token(admin, "early", "viewer", "default")
    await m.close()
    opening = Opening()
    remote = create_app(m, manage_lifecycle=False, remote=True, opening=opening)
    opened = asyncio.Event()

    async def slow_open() -> None:
        await asyncio.sleep(0.3)
        await m.open()
        opened.set()

    opening.start(slow_open)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=remote),
                                 base_url="https://corral") as client:
        r = await client.get("/v1/vms", headers=head)
        assert opened.is_set() and r.status_code == 200 and r.json() == [], r.text
        r = await client.get("/v1/pools", headers=head)
        assert r.status_code == 200 and r.json() == [], r.text
