"""The network service through the REST API, with the host side replaced by a recorder:
plans, refusals, what is stored and what survives a restart. No bridge, tap or nft table is
made here (the real ones are in tests/integration)."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral import client, errors
from corral.api.app import create_app
from corral.config import Paths
from corral.domain.states import State
from corral.host.network import Made
from corral.service.manager import Manager
from corral.service.netstate import Networks

MADE = ("ensure_network", "ensure_router", "attach", "ensure_tap")


class Host:
    """Stands in for every host-side call of the service: records its name."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        self.calls.append(fn.__name__)
        if fn.__name__ in MADE:
            return Made((), ())
        if fn.__name__ == "taps_counters":
            return [None] * len(args[0])
        return {} if fn.__name__ == "leases" else None


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> Host:
    fake = Host()
    monkeypatch.setattr(Networks, "call", staticmethod(fake.call))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    return fake


async def _api(home: Path) -> tuple[Manager, httpx.AsyncClient]:
    manager = Manager(Paths(home))
    await manager.open()
    app = create_app(manager, manage_lifecycle=False)
    return manager, httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                      base_url="http://corral")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    images = tmp_path / "home" / "images" / "tiny"
    images.mkdir(parents=True)
    (images / "vmlinux").write_bytes(b"\x7fELF")
    (images / "image.json").write_text(json.dumps(
        {"name": "tiny", "kernel": "vmlinux", "cmdline": "console=ttyS0", "agent": True}))
    return tmp_path / "home"


@pytest.fixture
async def api(home: Path, host: Host) -> AsyncIterator[httpx.AsyncClient]:
    manager, http = await _api(home)
    async with http:
        yield http
    await manager.close()


async def test_networks_plan_addresses_and_refuse_clashes(api: httpx.AsyncClient,
                                                          host: Host) -> None:
    r = await api.post("/v1/networks", json={"name": "lan", "subnet": "10.20.0.0/24"})
    assert r.status_code == 201, r.text
    assert (r.json()["gateway"], r.json()["bridge"]) == ("10.20.0.1", "crl-br-lan")
    r = await api.post("/v1/networks", json={"name": "dmz", "subnet": "10.20.0.128/25"})
    assert (r.status_code, r.json()["field"]) == (422, "subnet")
    r = await api.post("/v1/networks", json={"name": "lan", "subnet": "10.30.0.0/24"})
    assert r.status_code == 409

    web = (await api.post("/v1/vms", json={"name": "web", "nics": [{"network": "lan"}]})).json()
    nic = web["nics"][0]
    assert (nic["mode"], nic["ip"], nic["ifname"], nic["planned_for"]) == (
        "network", "10.20.0.10", "crl-tweb.0", "web")
    r = await api.post("/v1/vms", json={"name": "db", "nics": [
        {"network": "lan", "ip": "10.20.0.5"}, {"hostfwd": ["tcp:5432-:5432"]}]})
    assert r.status_code == 201 and r.json()["nics"][1]["hostfwd"] == ["tcp:127.0.0.1:5432-:5432"]
    for body, field in (
            ({"network": "lan", "ip": "10.20.0.5"}, "nics.0.ip"),
            ({"network": "lan", "ip": "10.20.0.1"}, "nics.0.ip"),
            ({"network": "nope"}, "nics.0.network"),
            ({"network": "lan", "mac": nic["mac"]}, "nics.0.mac"),
            ({"hostfwd": ["tcp:5432-:22"]}, "nics.0.hostfwd")):
        r = await api.post("/v1/vms", json={"name": "x", "nics": [body]})
        assert (r.status_code, r.json().get("field")) == (422, field), (body, r.text)
    assert [v["name"] for v in (await api.get("/v1/vms")).json()] == ["web", "db"]

    r = await api.delete("/v1/networks/lan")
    assert r.status_code == 409
    assert r.json()["message"] == "cannot remove network 'lan': used by web (nic0), db (nic0)"
    shown = (await api.get("/v1/networks/lan")).json()
    assert [(p["vm"], p["ip"], p["dns"]) for p in shown["ports"]] == [
        ("web", "10.20.0.10", "web.corral"), ("db", "10.20.0.5", "db.corral")]
    host.calls.clear()
    assert (await api.delete("/v1/vms/web")).status_code == 204
    assert host.calls == ["update_network"], "destroy takes the VM off its network"
    assert (await api.delete("/v1/vms/db")).status_code == 204
    assert (await api.delete("/v1/networks/lan")).status_code == 204
    assert (await api.get("/v1/networks")).json() == []


async def test_routers_forwards_and_rules(api: httpx.AsyncClient, host: Host) -> None:
    await api.post("/v1/networks", json={"name": "lan", "subnet": "10.20.0.0/24"})
    await api.post("/v1/networks", json={"name": "iso", "subnet": "10.21.0.0/24",
                                         "isolated": True})
    await api.post("/v1/vms", json={"name": "web", "nics": [{"network": "lan"}]})
    gw = (await api.post("/v1/routers", json={"name": "gw", "uplink": True})).json()
    assert (gw["host_address"], gw["router_address"]) == ("10.255.0.1", "10.255.0.2")
    r = await api.post("/v1/routers/gw/forwards", json={"host_port": 8080, "vm": "web",
                                                        "port": 80})
    assert (r.status_code, r.json()["field"]) == (422, "vm"), "web is on no network of gw"
    assert (await api.post("/v1/routers/gw/networks", json={"network": "lan"})).status_code \
        == 200
    r = await api.post("/v1/routers/gw/networks", json={"network": "iso"})
    assert r.status_code == 422 and "isolated" in r.json()["message"]
    r = await api.post("/v1/routers/gw/forwards", json={"host_port": 8080, "vm": "web",
                                                        "port": 80})
    assert r.status_code == 201 and r.json()["ip"] == "10.20.0.10"
    r = await api.post("/v1/routers/gw/forwards", json={"host_port": 8080, "vm": "web",
                                                        "port": 22})
    assert (r.status_code, r.json()["field"]) == (422, "host_port")
    r = await api.post("/v1/vms", json={"name": "x", "nics": [{"hostfwd": ["tcp:8080-:80"]}]})
    assert r.status_code == 422 and "router gw" in r.json()["message"]
    assert (await api.delete("/v1/routers/gw/networks/lan")).status_code == 409
    assert (await api.delete("/v1/routers/gw")).status_code == 409

    r = await api.post("/v1/firewall/rules", json={"target": "web", "allow": "tcp/22",
                                                   "from": "10.20.0.0/24"})
    assert r.status_code == 201 and r.json()["vm"] == "web"
    r = await api.post("/v1/firewall/rules", json={"target": "lan", "allow": "icmp"})
    assert r.status_code == 201 and r.json()["network"] == "lan"
    r = await api.post("/v1/firewall/rules", json={"target": "nope", "allow": "icmp"})
    assert (r.status_code, r.json()["field"]) == (422, "target")
    r = await api.put("/v1/networks/lan/policy", json={"policy": "drop"})
    assert r.json()["policy"] == "drop"

    assert (await api.delete("/v1/vms/web")).status_code == 204
    assert (await api.get("/v1/forwards")).json() == [], "forwards go with their VM"
    rules = (await api.get("/v1/firewall")).json()["rules"]
    assert [r["allow"] for r in rules] == ["icmp"], "a VM's rules go with it"
    assert (await api.delete("/v1/routers/gw/networks/lan")).status_code == 200
    assert (await api.delete("/v1/routers/gw")).status_code == 204


async def test_everything_stored_survives_a_restart(home: Path, host: Host) -> None:
    manager, http = await _api(home)
    async with http:
        await http.post("/v1/networks", json={"name": "lan", "subnet": "10.20.0.0/24"})
        await http.post("/v1/routers", json={"name": "gw"})
        await http.post("/v1/routers/gw/networks", json={"network": "lan"})
        first = (await http.post("/v1/firewall/rules", json={"target": "lan",
                                                             "allow": "tcp/22"})).json()
        await http.delete(f"/v1/firewall/rules/{first['id']}")
        await http.post("/v1/vms", json={"name": "web", "nics": [{"network": "lan"}]})
    await manager.close()
    host.calls.clear()
    manager, http = await _api(home)
    async with http:
        assert host.calls == ["_reconcile"], "the parts are found again, in one go"
        assert (await http.get("/v1/routers/gw")).json()["networks"] == [
            {"network": "lan", "address": "10.20.0.1/24"}]
        second = (await http.post("/v1/firewall/rules", json={"target": "lan",
                                                              "allow": "tcp/22"})).json()
        assert second["id"] > first["id"], "a removed rule's id is not handed out again"
        web = (await http.get("/v1/vms/web")).json()
        assert web["nics"][0]["ip"] == "10.20.0.10" and web["nics"][0]["lease"] is None
        topology = (await http.get("/v1/topology")).text
        assert "router gw" in topology and "vm web  nic0  10.20.0.10  defined" in topology
    await manager.close()


async def test_a_daemon_without_root_offers_user_mode_only(
        api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    for route, body in (("/v1/networks", {"name": "lan", "subnet": "10.20.0.0/24"}),
                        ("/v1/routers", {"name": "gw"}),
                        ("/v1/firewall/rules", {"target": "x", "allow": "icmp"})):
        r = await api.post(route, json=body)
        assert (r.status_code, r.json()["error"]) == (403, "needs_root"), route
        assert "--nic user" in r.json()["message"]
    r = await api.post("/v1/vms", json={"name": "web", "nics": [
        {"mode": "user", "hostfwd": ["tcp:8022-:22"]}]})
    assert r.status_code == 201 and r.json()["nics"][0]["hostfwd"] == ["tcp:127.0.0.1:8022-:22"]
    err = client._error(403, {"error": "needs_root", "message": "cannot create network"})
    assert isinstance(err, errors.NeedsRoot) and err.exit_code == 10


async def test_a_clone_gets_its_own_port_when_it_first_starts(home: Path, host: Host) -> None:
    manager, http = await _api(home)
    async with http:
        await http.post("/v1/networks", json={"name": "lan", "subnet": "10.20.0.0/24"})
        web = (await http.post("/v1/vms", json={"name": "web", "nics": [
            {"network": "lan"}]})).json()["nics"][0]
        r = await http.post("/v1/vms/web/clone", params={"new": "copy"})
        assert r.status_code == 201, r.text
        assert r.json()["nics"][0]["planned_for"] == "web", "a copy, not planned yet"
        lan = (await http.get("/v1/networks/lan")).json()
        assert [p["vm"] for p in lan["ports"]] == ["web"], "the copy takes nothing yet"
        host.calls.clear()
        await manager.runtime.hooks.plug(manager.runtime.get("copy"))
        nic = (await http.get("/v1/vms/copy")).json()["nics"][0]
        assert (nic["planned_for"], nic["ip"], nic["ifname"]) == ("copy", "10.20.0.11",
                                                                  "crl-tcopy.0")
        assert nic["mac"] != web["mac"]
        assert host.calls[:2] == ["ensure_tap", "update_network"]
    await manager.close()


async def test_forced_removal_takes_users_off_first(home: Path, host: Host) -> None:
    m, api = await _api(home)
    async with api:
        for name, subnet in (("lan", "10.20.0.0/24"), ("dmz", "10.21.0.0/24")):
            await api.post("/v1/networks", json={"name": name, "subnet": subnet})
        await api.post("/v1/routers", json={"name": "gw", "uplink": True})
        for network in ("lan", "dmz"):
            await api.post("/v1/routers/gw/networks", json={"network": network})
        await api.post("/v1/vms", json={"name": "web", "nics": [{"network": "lan"}]})
        await api.post("/v1/vms", json={"name": "db", "nics": [{"network": "dmz"},
                                                               {"network": "lan"}]})
        for port, vm in ((8080, "web"), (9090, "db")):
            r = await api.post("/v1/routers/gw/forwards", json={"host_port": port, "vm": vm,
                                                                "port": 80})
            assert r.status_code == 201, r.text

        with pytest.raises(errors.InUse, match="used by web"):
            await m.networks.rm("lan")
        m.runtime.get("db").state = State.RUNNING  # its NICs were there at boot: no hot-unplug
        with pytest.raises(errors.InUse, match=r"by db \(nic1, running, present at boot\)"):
            await m.networks.rm("lan", force=True)
        assert len((await api.get("/v1/forwards")).json()) == 2, "refused before any change"
        m.runtime.get("db").state = State.DEFINED

        assert await m.networks.rm("lan", force=True) == [
            "forward tcp 8080 on gw", "NIC nic0 of web", "NIC nic1 of db",
            "router gw leg on lan"]
        assert [n["name"] for n in (await api.get("/v1/networks")).json()] == ["dmz"]
        assert (await api.get("/v1/vms/web")).json()["nics"] == []
        assert [n["network"] for n in (await api.get("/v1/vms/db")).json()["nics"]] == ["dmz"]

        with pytest.raises(errors.InUse, match="network dmz"):
            await m.routers.rm("gw")
        assert await m.routers.rm("gw", force=True) == [
            "forward tcp 9090 on gw", "router gw leg on dmz"]
        assert (await api.get("/v1/routers")).json() == []
        assert await m.networks.rm("dmz", force=True) == ["NIC nic0 of db"]
        with pytest.raises(errors.NotFound):
            await m.routers.rm("gw", force=True)
    await m.close()


async def test_networks_and_routers_belong_to_projects(home: Path, host: Host) -> None:
    """A token sees its project's networks and routers only; another project's are not
    found, even to attach a NIC or a router leg to; the listings and firewall hide them."""
    manager = Manager(Paths(home))
    await manager.open()
    local = httpx.AsyncClient(transport=httpx.ASGITransport(
        app=create_app(manager, manage_lifecycle=False)), base_url="http://corral")
    remote = httpx.AsyncClient(transport=httpx.ASGITransport(
        app=create_app(manager, manage_lifecycle=False, remote=True)), base_url="https://c")
    async with local, remote:
        heads = {}
        for p in ("red", "blue"):
            assert (await local.post("/v1/projects", json={"name": p})).status_code == 201
            r = await local.post("/v1/tokens", json={"name": f"op-{p}", "role": "operator",
                                                     "project": p})
            heads[p] = {"Authorization": f"Bearer {r.json()['secret']}"}
        red, blue = heads["red"], heads["blue"]
        r = await remote.post("/v1/networks", json={"name": "rnet", "subnet": "10.41.0.0/24"},
                              headers=red)
        assert r.status_code == 201, r.text
        assert (await remote.post("/v1/routers", json={"name": "rgw"},
                                  headers=red)).status_code == 201
        assert [n["name"] for n in (await remote.get("/v1/networks", headers=red)).json()] \
            == ["rnet"]
        assert (await remote.get("/v1/networks", headers=blue)).json() == []
        assert (await remote.get("/v1/routers", headers=blue)).json() == []
        assert (await remote.get("/v1/firewall", headers=blue)).json()["policies"] == {}
        for method, url, body in (("GET", "/v1/networks/rnet", None),
                                  ("DELETE", "/v1/networks/rnet", None),
                                  ("GET", "/v1/routers/rgw", None),
                                  ("POST", "/v1/routers/rgw/networks", {"network": "rnet"})):
            r = await remote.request(method, url, json=body, headers=blue)
            assert r.status_code == 404, (method, url, r.text)
        r = await remote.post("/v1/vms", json={"name": "bvm", "nics": [{"network": "rnet"}]},
                              headers=blue)
        ghost = await remote.post("/v1/vms", json={"name": "bvm", "nics": [
            {"network": "ghost"}]}, headers=blue)  # the same answer as no such network
        assert r.status_code == ghost.status_code == 422, r.text
        assert r.json()["message"] == ghost.json()["message"].replace("ghost", "rnet")
        assert (await local.get("/v1/vms")).json() == []  # nothing half-made
        assert {n["name"] for n in (await local.get("/v1/networks")).json()} == {"rnet"}
        r = await local.delete("/v1/projects/red")
        assert r.status_code == 409 and "network rnet" in r.json()["facts"]["users"]
        assert (await remote.delete("/v1/routers/rgw", headers=red)).status_code == 204
        assert (await remote.delete("/v1/networks/rnet", headers=red)).status_code == 204
    await manager.close()
