"""The REST API's contract without QEMU: statuses, error bodies, OpenAPI, defined VMs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from corral.api.app import create_app
from corral.config import Paths
from corral.service.manager import Manager


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    images = tmp_path / "home" / "images" / "tiny"
    images.mkdir(parents=True)
    (images / "vmlinux").write_bytes(b"\x7fELF")
    (images / "image.json").write_text(json.dumps(
        {"name": "tiny", "kernel": "vmlinux", "cmdline": "console=ttyS0", "agent": True}))
    manager = Manager(Paths(tmp_path / "home"))
    await manager.open()
    app = create_app(manager, manage_lifecycle=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://corral") as client:
        yield client
    await manager.close()


async def test_create_show_list_destroy(api: httpx.AsyncClient, tmp_path: Path) -> None:
    r = await api.post("/v1/vms", json={"name": "a1", "memory": "128M", "cpus": 2,
                                        "disks": [{"size": "1G"}]})
    assert r.status_code == 201, r.text
    vm = r.json()
    assert vm["state"] == "defined" and vm["memory_bytes"] == 128 << 20 and vm["cpus"] == 2
    assert vm["nics"][0]["mac"].startswith("52:54:00:")
    disk = Path(vm["disks"][0]["path"])
    assert disk.is_file()
    assert [v["name"] for v in (await api.get("/v1/vms")).json()] == ["a1"]
    assert (await api.get("/v1/vms/a1")).json()["operations"] == ["destroy", "start"]
    assert (await api.delete("/v1/vms/a1")).status_code == 204
    assert not disk.exists() and not (tmp_path / "home" / "vms" / "a1").exists()
    assert (await api.get("/v1/vms/a1")).status_code == 404


@pytest.mark.parametrize(("body", "field"), [
    ({"name": "a", "memory": "12X"}, "memory"),
    ({"name": "a", "cpus": 0}, "cpus"),
    ({"name": "a", "memory": "100T"}, "memory"),
    ({"name": "Bad_Name"}, "name"),
    ({"name": "a", "kernel": "/no/such/kernel"}, "kernel"),
    ({"name": "a", "image": "nope"}, "image"),
    ({"name": "a", "colour": "red"}, "colour"),
    ({"name": "a", "disks": [{"path": "/no/such.img"}]}, "disks.0.path"),
])
async def test_bad_specs_are_422_and_create_nothing(api: httpx.AsyncClient, tmp_path: Path,
                                                    body: dict[str, object], field: str) -> None:
    r = await api.post("/v1/vms", json=body)
    assert r.status_code == 422, r.text
    err = r.json()
    # a path is refused before it is looked at: nothing says whether it exists
    kind = "path_not_allowed" if field in ("kernel", "disks.0.path") else "invalid_spec"
    assert err["error"] == kind and err["field"] == field
    assert err["message"].startswith(field)
    assert (await api.get("/v1/vms")).json() == []
    assert not list((tmp_path / "home" / "vms").glob("*"))


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/disks", {"name": "x y", "size": "1M"}),
    ("/v1/networks", {"name": "Bad_Net", "subnet": "10.9.0.0/24"}),
    ("/v1/pools", {"name": "p'q", "source": "gold:base"}),
    ("/v1/vms/Bad_Name/snapshots", {"name": "s"}),
])
async def test_every_name_off_the_rule_is_told_the_rule(api: httpx.AsyncClient, path: str,
                                                         body: dict[str, object]) -> None:
    """Not pydantic's pattern: what is wrong and what a name may be, as for a VM's name."""
    r = await api.post(path, json=body)
    assert r.status_code == 422, r.text
    bad = "Bad_Name" if "Bad_Name" in path else body["name"]
    assert r.json()["message"] == (
        f"name: {bad!r} is not a valid name; use 1-32 lowercase letters, digits and '-', "
        "starting with a letter or digit"), r.json()
    long = await api.post("/v1/pools", json={"name": "p" * 25, "source": "gold:base"})
    assert long.json()["message"] == "name: 25 characters is too long; use at most 24"


@pytest.mark.parametrize(("body", "message"), [
    ({"arrival_rate": 0, "runtime": 30, "target_wait": 0.05},
     "arrival_rate: 0 is too small; give more than 0"),
    ({"arrival_rate": 2, "runtime": -1.5, "target_wait": 0.05},
     "runtime: -1.5 is too small; give more than 0"),
])
async def test_a_number_out_of_bounds_is_told_the_bound(api: httpx.AsyncClient,
                                                        body: dict[str, object],
                                                        message: str) -> None:
    """Not pydantic's 'Input should be greater than 0': the value, and what to give."""
    r = await api.post("/v1/pools/recommend", json=body)
    assert r.status_code == 422 and r.json()["message"] == message, r.json()


async def test_name_taken_is_409(api: httpx.AsyncClient) -> None:
    assert (await api.post("/v1/vms", json={"name": "dup"})).status_code == 201
    r = await api.post("/v1/vms", json={"name": "dup"})
    assert r.status_code == 409 and r.json()["error"] == "already_exists"


@pytest.mark.parametrize("op", ["pause", "resume", "shutdown", "stop", "reboot"])
async def test_wrong_state_is_409_and_changes_nothing(api: httpx.AsyncClient, op: str) -> None:
    await api.post("/v1/vms", json={"name": "w"})
    r = await api.post(f"/v1/vms/w/{op}")
    assert r.status_code == 409, r.text
    body = r.json()
    assert body["error"] == "invalid_state" and body["state"] == "defined"
    assert (await api.get("/v1/vms/w")).json()["state"] == "defined"


async def test_unknown_vm_is_404(api: httpx.AsyncClient) -> None:
    for method, path in [("GET", "/v1/vms/ghost"), ("POST", "/v1/vms/ghost/start"),
                         ("POST", "/v1/vms/ghost/pause"), ("DELETE", "/v1/vms/ghost"),
                         ("GET", "/v1/vms/ghost/logs")]:
        r = await api.request(method, path)
        assert r.status_code == 404, (method, path)
        assert "ghost" in r.json()["message"]


async def test_openapi_and_host(api: httpx.AsyncClient) -> None:
    schema = (await api.get("/openapi.json")).json()
    assert "/v1/vms/{name}/pause" in schema["paths"]
    host = (await api.get("/v1/host")).json()
    assert host["accel"] in ("kvm", "tcg") and host["cpus"] >= 1 and host["accel_reason"]


async def test_events_are_recorded(api: httpx.AsyncClient) -> None:
    await api.post("/v1/vms", json={"name": "e1"})
    await api.delete("/v1/vms/e1")
    kinds = [e["kind"] for e in (await api.get("/v1/events", params={"vm": "e1"})).json()]
    assert [k for k in kinds if k != "audit"] == ["created", "destroyed"]
    assert kinds.count("audit") == 2  # each request, as the audit trail records it


async def test_failed_create_removes_disks_it_made(api: httpx.AsyncClient, tmp_path: Path) -> None:
    r = await api.post("/v1/vms", json={"name": "half", "disks": [
        {"size": "64M"}, {"path": str(tmp_path / "missing.img")}]})
    assert r.status_code == 422 and r.json()["field"] == "disks.1.path"
    assert not (tmp_path / "home" / "vms" / "half").exists()
    assert (await api.get("/v1/vms")).json() == []
