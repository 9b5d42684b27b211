"""Tokens, roles, projects, quotas, audit and the rate limit, through the API on the fake
engine: the role × route matrix over every route the app has, two projects that cannot see
each other, quotas, revocation on the next request, expiry, 401/403/404/429."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from corral.api.app import create_app
from corral.api.auth import required
from corral.errors import QuotaExceeded
from corral.service.manager import Manager

from .conftest import vm

# routes only an admin may call (the host's images, what spans projects, and the management
# of tokens and projects); exports and imports are uploads and downloads now: an operator's
ADMIN_ONLY = {
    ("GET", "/v1/tokens"), ("POST", "/v1/tokens"), ("DELETE", "/v1/tokens/{name}"),
    ("POST", "/v1/projects"), ("PATCH", "/v1/projects/{name}"),
    ("DELETE", "/v1/projects/{name}"), ("POST", "/v1/images"), ("DELETE", "/v1/images/{image}"),
    ("GET", "/v1/topology"), ("GET", "/v1/trace"),
    ("PUT", "/v1/cluster/incoming/{name}"),  # a whole VM another host sends (cold move)
    # a live migration's steps between hosts; a host emptied by live migrations
    ("POST", "/v1/cluster/migrate-in/{name}"), ("POST", "/v1/cluster/migrate-in/{name}/outcome"),
    ("DELETE", "/v1/cluster/migrate-in/{name}"), ("POST", "/v1/cluster/evacuate"),
    ("POST", "/v1/hosts/{host}/evacuate"),
}
# reads of what is inside a guest: its files, its saved memory
OPERATOR_READS = {("GET", "/v1/vms/{name}/files"), ("GET", "/v1/vms/{name}/state")}
STREAMS = {("GET", "/v1/events/stream")}


@pytest.fixture
async def apis(m: Manager) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """(local: the unix socket's app, remote: the TLS listener's app) on one manager."""
    local = httpx.AsyncClient(transport=httpx.ASGITransport(
        app=create_app(m, manage_lifecycle=False)), base_url="http://corral")
    remote = httpx.AsyncClient(transport=httpx.ASGITransport(
        app=create_app(m, manage_lifecycle=False, remote=True)), base_url="https://corral")
    async with local, remote:
        yield local, remote


async def _token(local: httpx.AsyncClient, name: str, role: str, project: str = "default",
                 **extra: Any) -> dict[str, str]:
    r = await local.post("/v1/tokens", json={"name": name, "role": role, "project": project,
                                             **extra})
    assert r.status_code == 201, r.text
    secret = r.json()["secret"]
    assert secret.startswith("crl_")
    return {"Authorization": f"Bearer {secret}"}


def _routes(m: Manager) -> list[tuple[str, str]]:
    app = create_app(m, manage_lifecycle=False)
    return sorted((method, r.path) for r in app.routes if isinstance(r, APIRoute)
                  and r.path.startswith("/v1/") for method in r.methods)


def _url(path: str) -> str:
    return path.replace("{rule_id}", "999").replace("{host_port}", "9999").replace(
        "{proto}", "tcp").replace("{", "").replace("}", "-none")


async def test_role_by_route_matrix(m: Manager, apis: tuple[httpx.AsyncClient, ...]) -> None:
    """Every route of the app (so a new route cannot escape), for each role: refused 403
    exactly when the role is too low, never 401 with a valid token."""
    local, remote = apis
    heads = {role: await _token(local, f"t-{role}", role)
             for role in ("viewer", "operator", "admin")}
    routes = _routes(m)
    acting = [(meth, path) for meth, path in routes if meth not in ("GET", "HEAD")]
    assert len(acting) >= 40, acting
    for method, path in routes:
        need = "admin" if (method, path) in ADMIN_ONLY else \
            "viewer" if method == "GET" and (method, path) not in OPERATOR_READS else "operator"
        if (method, path) in STREAMS:  # never ends: the Guard's own decision is checked
            assert required(method, path) == need, (method, path)
            continue
        for role, head in heads.items():
            r = await remote.request(method, _url(path), headers=head,
                                     content=b"{}" if method in ("POST", "PUT", "PATCH")
                                     else None)
            allowed = ["viewer", "operator", "admin"].index(role) >= \
                ["viewer", "operator", "admin"].index(need)
            assert r.status_code != 401, (role, method, path, r.text)
            assert (r.status_code == 403 and r.json()["kind"] == "forbidden") != allowed, \
                (role, method, path, r.status_code, r.text)
            assert r.status_code < 500 or r.status_code == 502, (role, method, path, r.text)


async def test_bad_tokens_are_401_one_line(m: Manager, apis: tuple[httpx.AsyncClient, ...]
                                           ) -> None:
    local, remote = apis
    for head in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic eDp5"},
                 {"Authorization": "Bearer crl_0123456789abcdef_wrong"}):
        r = await remote.get("/v1/vms", headers=head)
        assert r.status_code == 401, (head, r.text)
        body = r.json()
        assert body["kind"] == "unauthorized" and "\n" not in body["message"]
    assert (await local.get("/v1/vms")).status_code == 200  # the socket: local admin


async def test_revoked_and_expired_tokens_stop_at_once(
        m: Manager, apis: tuple[httpx.AsyncClient, ...]) -> None:
    local, remote = apis
    head = await _token(local, "short", "viewer")
    assert (await remote.get("/v1/vms", headers=head)).status_code == 200
    assert (await local.delete("/v1/tokens/short")).status_code == 204
    r = await remote.get("/v1/vms", headers=head)
    assert r.status_code == 401 and "revoked" in r.json()["message"]
    head = await _token(local, "brief", "viewer", expires="1s")
    assert (await remote.get("/v1/vms", headers=head)).status_code == 200
    time.sleep(1.1)
    r = await remote.get("/v1/vms", headers=head)
    assert r.status_code == 401 and "expired" in r.json()["message"]
    assert (await local.post("/v1/tokens", json={"name": "x", "role": "viewer",
                                                 "expires": "soon"})).status_code == 422
    assert (await local.post("/v1/tokens", json={"name": "x", "role": "viewer",
                                                 "project": "nope"})).status_code == 404
    listed = (await local.get("/v1/tokens")).json()
    assert [t["name"] for t in listed] == ["brief"] and "secret" not in listed[0]
    assert "hash" not in listed[0] and "salt" not in listed[0]


async def test_two_projects_cannot_see_each_other(
        m: Manager, apis: tuple[httpx.AsyncClient, ...]) -> None:
    local, remote = apis
    for p in ("alpha", "beta"):
        assert (await local.post("/v1/projects", json={"name": p})).status_code == 201
    a = await _token(local, "op-a", "operator", "alpha")
    b = await _token(local, "op-b", "operator", "beta")
    r = await remote.post("/v1/vms", json=vm("a1"), headers=a)
    assert r.status_code == 201 and r.json()["project"] == "alpha", r.text
    assert (await remote.post("/v1/vms/a1/start", headers=a)).status_code == 200
    r = await remote.post("/v1/disks", json={"name": "da", "size": "1M"}, headers=a)
    assert r.status_code == 201 and r.json()["project"] == "alpha", r.text
    # beta sees nothing of alpha's, and acting on it is "not found", not "forbidden"
    assert (await remote.get("/v1/vms", headers=b)).json() == []
    assert (await remote.get("/v1/disks", headers=b)).json() == []
    for method, url in (("GET", "/v1/vms/a1"), ("POST", "/v1/vms/a1/pause"),
                        ("DELETE", "/v1/vms/a1"), ("GET", "/v1/vms/a1/snapshots"),
                        ("POST", "/v1/vms/a1/snapshots"), ("GET", "/v1/disks/da"),
                        ("DELETE", "/v1/disks/da"), ("GET", "/v1/projects/alpha")):
        r = await remote.request(method, url, headers=b,
                                 json={"name": "s1"} if "snapshots" in url else None)
        assert r.status_code == 404, (method, url, r.text)
        assert "alpha" not in r.text or url.endswith("/alpha")  # only the name it asked
    seen = (await remote.get("/v1/events", headers=b)).json()  # beta's own attempts only
    assert [e for e in seen if e["vm"] in ("a1", "da") and e["kind"] != "audit"] == []
    assert {e["detail"]["who"] for e in seen if e["kind"] == "audit"} == {"op-b"}
    assert (await remote.get("/v1/events?project=alpha", headers=b)).json() == []
    # alpha acts on its own; the local admin sees both projects, or one it selects
    assert (await remote.post("/v1/vms/a1/pause", headers=a)).json()["state"] == "paused"
    assert (await remote.post("/v1/vms", json=vm("b1"), headers=b)).status_code == 201
    assert {v["name"] for v in (await local.get("/v1/vms")).json()} == {"a1", "b1"}
    r = await local.get("/v1/vms", headers={"X-Corral-Project": "beta"})
    assert [v["name"] for v in r.json()] == ["b1"]
    r = await remote.get("/v1/vms", headers={**a, "X-Corral-Project": "beta"})
    assert r.status_code == 403
    # the audit trail: who did what to which resource, with the result
    audit = [e for e in (await local.get("/v1/events?project=alpha")).json()
             if e["kind"] == "audit"]
    pause = [e for e in audit if e["detail"]["action"] == "POST /v1/vms/{name}/pause"]
    assert {(e["vm"], e["detail"]["who"], e["detail"]["result"]) for e in pause} == {
        ("a1", "op-a", "ok")}
    made = [e for e in audit if e["detail"]["action"] == "POST /v1/vms"]
    assert made and made[0]["vm"] == "a1" and made[0]["detail"]["status"] == 201
    beta = (await local.get("/v1/events?project=beta")).json()
    assert any(e["detail"].get("result") == "not_found" and e["detail"]["who"] == "op-b"
               for e in beta if e["kind"] == "audit")
    r = await local.delete("/v1/projects/alpha")
    assert r.status_code == 409 and "vm a1" in r.json()["facts"]["users"]
    assert (await local.delete("/v1/projects/default")).status_code == 422
    for name in ("a1", "b1"):
        assert (await local.delete(f"/v1/vms/{name}")).status_code == 204


async def test_quotas_refuse_naming_the_quota(
        m: Manager, apis: tuple[httpx.AsyncClient, ...]) -> None:
    local, remote = apis
    r = await local.post("/v1/projects", json={"name": "q", "max_vms": 2, "max_cpus": 2,
                                               "max_memory": "512M", "max_disk": "1G"})
    assert r.status_code == 201 and r.json()["quotas"]["max_memory"] == 512 << 20
    q = await _token(local, "op-q", "operator", "q")
    assert (await remote.post("/v1/vms", json=vm("q1"), headers=q)).status_code == 201
    for body, quota in ((vm("q2", cpus=2), "max_cpus"), (vm("q2", memory="384M"),
                                                         "max_memory"),
                        (vm("q2", disks=[{"size": "2G"}]), "max_disk")):
        r = await remote.post("/v1/vms", json=body, headers=q)
        assert r.status_code == 409 and r.json()["kind"] == "quota_exceeded", r.text
        assert r.json()["facts"]["quota"] == quota and quota in r.json()["message"]
    r = await remote.post("/v1/disks", json={"name": "big", "size": "2G"}, headers=q)
    assert r.json()["facts"]["quota"] == "max_disk", r.text
    # nor does a disk made small grow past it
    r = await remote.post("/v1/disks", json={"name": "small", "size": "64M"}, headers=q)
    assert r.status_code == 201, r.text
    r = await remote.post("/v1/disks/small/resize", params={"size": "2G"}, headers=q)
    assert r.status_code == 409 and r.json()["facts"]["quota"] == "max_disk", r.text
    r = await remote.post("/v1/disks/small/resize", params={"size": "128M"}, headers=q)
    assert r.status_code == 200 and r.json()["size_bytes"] == 128 << 20, r.text
    assert (await remote.delete("/v1/disks/small", headers=q)).status_code == 204
    assert (await remote.post("/v1/vms", json=vm("q2"), headers=q)).status_code == 201
    r = await remote.post("/v1/vms", json=vm("q3"), headers=q)
    assert r.json()["facts"]["quota"] == "max_vms", r.text
    assert {v["name"] for v in (await local.get("/v1/vms")).json()} == {"q1", "q2"}
    usage = (await remote.get("/v1/projects/q", headers=q)).json()["usage"]
    assert usage["vms"] == 2 and usage["memory"] == 512 << 20
    r = await local.patch("/v1/projects/q", json={"max_vms": 3})
    assert r.json()["quotas"] == {"max_vms": 3, "max_cpus": 2, "max_memory": 512 << 20,
                                  "max_disk": 1 << 30}
    # a VM that grows (a stack's new hardware) counts its growth
    with pytest.raises(QuotaExceeded, match="max_cpus"):
        await m.vms.set_hardware("q1", cpus=2)
    assert (await m.vms.set_hardware("q1", memory="128M"))["memory_bytes"] == 128 << 20
    # and a clone counts the disks it copies
    await local.patch("/v1/projects/q", json={"max_cpus": 4, "max_memory": "1G"})
    await local.delete("/v1/vms/q2")
    r = await remote.post("/v1/vms", json=vm("q2", disks=[{"size": "600M"}]), headers=q)
    assert r.status_code == 201, r.text
    r = await remote.post("/v1/vms/q2/clone", params={"new": "q3"}, headers=q)
    assert r.status_code == 409 and r.json()["facts"]["quota"] == "max_disk", r.text
    assert {v["name"] for v in (await local.get("/v1/vms")).json()} == {"q1", "q2"}
    for name in ("q1", "q2"):
        await local.delete(f"/v1/vms/{name}")


async def test_rate_limit_answers_429_with_retry_after(
        m: Manager, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_API_RATE", "0.5")
    monkeypatch.setenv("CORRAL_API_BURST", "3")
    app = create_app(m, manage_lifecycle=False, remote=True)
    local = httpx.AsyncClient(transport=httpx.ASGITransport(
        app=create_app(m, manage_lifecycle=False)), base_url="http://corral")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="https://corral") as remote, local:
        head = await _token(local, "busy", "viewer")
        other = await _token(local, "calm", "viewer")
        statuses = [(await remote.get("/v1/vms", headers=head)).status_code
                    for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        r = await remote.get("/v1/vms", headers=head)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.json()["kind"] == "rate_limited"
        assert (await remote.get("/v1/vms", headers=other)).status_code == 200
        for _ in range(10):  # the local socket has no limit
            assert (await local.get("/v1/vms")).status_code == 200


async def test_lists_are_paged(m: Manager, apis: tuple[httpx.AsyncClient, ...]) -> None:
    local, _ = apis
    for i in range(3):
        assert (await local.post("/v1/vms", json=vm(f"p{i}"))).status_code == 201
    r = await local.get("/v1/vms?offset=1&limit=1")
    assert [v["name"] for v in r.json()] == ["p1"] and r.headers["x-total-count"] == "3"
    assert (await local.get("/v1/vms?limit=100000")).status_code == 422
    for i in range(3):
        await local.delete(f"/v1/vms/p{i}")
