"""Networks that span hosts, planned: two daemons (hosts "a" and "b") share one cluster
store, here an in-memory stand-in for :class:`corral.store.clusternets.ClusterNets`; the
host side is a recorder. Cluster-wide addresses, a lost race planned again, the home's DHCP
knowing every host's NICs, an address that follows its VM to another host, refusals."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.api.app import create_app
from corral.config import Paths
from corral.errors import AlreadyExists, InUse
from corral.host.network import Made, NetworkPlan, Port
from corral.service import nics, overlaynets
from corral.service.manager import Manager
from corral.service.netoverlay import Overlay, underlay_of
from corral.service.netstate import Networks
from corral.store.clusternets import ClusterNetwork, Reservation, free_vni

MADE = ("ensure_network", "ensure_tap")


class Store:
    """The cluster's tables in memory, with the same methods and refusals."""

    def __init__(self) -> None:
        self.nets: dict[str, ClusterNetwork] = {}
        self.res: list[Reservation] = []
        self.hosts: dict[str, dict[str, str]] = {}
        self.lose_next = 0  # reservations that another host "takes first"

    def networks(self) -> dict[str, ClusterNetwork]:
        return dict(self.nets)

    def add_network(self, plan: NetworkPlan, home: str, isolated: bool, project: str
                    ) -> NetworkPlan:
        if plan.name in self.nets:
            raise AlreadyExists("exists")
        plan = replace(plan, vni=free_vni(n.vni for n in self.nets.values()))
        self.nets[plan.name] = ClusterNetwork(plan, home, isolated, project, 0.0)
        return plan

    def delete_network(self, name: str) -> None:
        users = [f"{r.port.vm} (on {r.host})" for r in self.res if r.port.network == name]
        if users:
            raise InUse("network", name, "remove", users)
        self.nets.pop(name)

    def ports(self, network: str | None = None) -> list[Reservation]:
        return [r for r in self.res if network in (None, r.port.network)]

    def reserve(self, port: Port, host: str) -> bool:
        if self.lose_next:  # another host holds this address now
            self.lose_next -= 1
            self.res.append(Reservation(replace(port, vm="other", mac="52:54:00:99:99:99"),
                                        "c"))
            return False
        self.res = [r for r in self.res if not (r.port.network == port.network and
                                                r.port.mac == port.mac and r.port.vm == port.vm)]
        if any(r.port.network == port.network and port.ip in (r.port.ip,) for r in self.res):
            return False
        self.res.append(Reservation(port, host))
        return True

    def release(self, vm: str, macs: list[str] | None = None) -> None:
        self.res = [r for r in self.res if not (r.port.vm == vm and
                                                (macs is None or r.port.mac in macs))]

    def sweep(self, network: str, older_than: float) -> None:
        pass

    def owner(self, vm: str) -> str | None:
        return None

    def carriers(self) -> dict[str, dict[str, str]]:
        return {n: dict(h) for n, h in self.hosts.items()}

    def carry(self, network: str, host: str, underlay: str) -> None:
        self.hosts.setdefault(network, {})[host] = underlay

    def drop(self, network: str, host: str) -> None:
        self.hosts.get(network, {}).pop(host, None)

    def close(self) -> None:
        pass

    def snapshot(self) -> dict[str, Any]:
        return {"networks": self.networks(), "ports": self.ports(),
                "carriers": self.carriers()}


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    made: list[str] = []

    async def call(fn: Callable[..., Any], *args: Any) -> Any:
        if isinstance(getattr(fn, "__self__", None), (Store, Overlay)) \
                or fn is overlaynets.reserve:
            return fn(*args)
        made.append(fn.__name__)
        if fn.__name__ in MADE:
            return Made((), ())
        if fn.__name__ == "taps_counters":
            return [None] * len(args[0])
        return {} if fn.__name__ == "leases" else None

    monkeypatch.setattr(Networks, "call", staticmethod(call))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    return made


def _home(root: Path, name: str) -> Path:
    images = root / name / "images" / "tiny"
    images.mkdir(parents=True)
    (images / "vmlinux").write_bytes(b"\x7fELF")
    (images / "image.json").write_text(json.dumps(
        {"name": "tiny", "kernel": "vmlinux", "cmdline": "console=ttyS0", "agent": True}))
    return root / name


@pytest.fixture
async def hosts(tmp_path: Path, calls: list[str]
                ) -> AsyncIterator[dict[str, tuple[Manager, httpx.AsyncClient]]]:
    store = Store()
    out = {}
    for n, name in enumerate(("a", "b"), 1):
        manager = Manager(Paths(_home(tmp_path, name)))
        await manager.open()
        manager.runtime.hooks.net.overlay = Overlay(store, name,  # type: ignore[arg-type]
                                                    IPv4Address(f"192.0.2.{n}"))
        app = create_app(manager, manage_lifecycle=False)
        out[name] = (manager, httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                                base_url="http://corral"))
    yield out
    for manager, http in out.values():
        await http.aclose()
        await manager.close()


def test_vnis_are_the_lowest_free_ones() -> None:
    assert free_vni([]) == 4096
    assert free_vni([4096, 4098]) == 4097


def test_the_underlay_is_the_address_peers_reach() -> None:
    assert underlay_of("10.1.0.2:7443") == IPv4Address("10.1.0.2")
    assert underlay_of("0.0.0.0:7443") is None and underlay_of("") is None


async def test_addresses_are_planned_for_the_whole_cluster(
        hosts: dict[str, tuple[Manager, httpx.AsyncClient]], calls: list[str]) -> None:
    (ma, a), (_mb, b) = hosts["a"], hosts["b"]
    r = await a.post("/v1/networks", json={"name": "lan", "subnet": "10.20.0.0/24"})
    assert r.status_code == 201, r.text
    lan = r.json()
    assert (lan["home"], lan["vni"], lan["mtu"], lan["hosts"]) == ("a", 4096, 1450, ["a"])
    assert "ensure_network" in calls and "set_peers" in calls
    r = await b.post("/v1/networks", json={"name": "lan", "subnet": "10.30.0.0/24"})
    assert r.status_code == 409, "one name in the whole cluster"
    r = await b.post("/v1/networks", json={"name": "x", "subnet": "10.20.0.128/25"})
    assert r.status_code == 422 and "overlaps network 'lan'" in r.text
    # b does not carry lan: it plans on the cluster's plan, against the cluster's ports
    on_b = (await b.post("/v1/vms", json={"name": "vb", "nics": [{"network": "lan"}]}))
    assert on_b.status_code == 201, on_b.text
    on_a = (await a.post("/v1/vms", json={"name": "va", "nics": [{"network": "lan"}]}))
    ips = [on_b.json()["nics"][0]["ip"], on_a.json()["nics"][0]["ip"]]
    assert ips == ["10.20.0.10", "10.20.0.11"]
    taken = await a.post("/v1/vms", json={"name": "vx", "nics": [
        {"network": "lan", "ip": "10.20.0.10"}]})
    assert taken.status_code == 422 and "already taken" in taken.text, "b's address, seen on a"
    # the home's dnsmasq is given every host's NICs (with their DNS names)
    ports = ma.runtime.hooks.net.ports("lan")
    assert {(p.vm, p.ip, p.hostname) for p in ports} == {("va", "10.20.0.11", "va"),
                                                         ("vb", "10.20.0.10", "vb")}
    shown = (await b.get("/v1/networks/lan")).json()
    assert {p["vm"]: p["host"] for p in shown["ports"]} == {"va": "a", "vb": "b"}


async def test_a_lost_race_is_planned_again(
        hosts: dict[str, tuple[Manager, httpx.AsyncClient]]) -> None:
    (ma, a), (_mb, b) = hosts["a"], hosts["b"]
    await a.post("/v1/networks", json={"name": "lan", "subnet": "10.20.0.0/24"})
    store = ma.runtime.hooks.net.overlay.store  # type: ignore[union-attr]
    store.lose_next = 2  # another host takes .10, then .11, between plan and write
    r = await b.post("/v1/vms", json={"name": "vb", "nics": [{"network": "lan"}]})
    assert r.status_code == 201, r.text
    assert r.json()["nics"][0]["ip"] == "10.20.0.12"
    assert sorted(x.port.ip for x in store.res) == ["10.20.0.10", "10.20.0.11", "10.20.0.12"]


async def test_an_address_follows_its_vm_to_another_host(
        hosts: dict[str, tuple[Manager, httpx.AsyncClient]], calls: list[str]) -> None:
    (ma, a), (mb, _b) = hosts["a"], hosts["b"]
    await a.post("/v1/networks", json={"name": "lan", "subnet": "10.20.0.0/24"})
    nic = (await a.post("/v1/vms", json={"name": "vm", "nics": [{"network": "lan"}]})
           ).json()["nics"][0]
    spec = ma.runtime.get("vm").spec
    net_b = mb.runtime.hooks.net
    calls.clear()
    await overlaynets.plugging(net_b, "vm", spec.nics)  # its QEMU starts on b
    assert calls[0] == "ensure_network" and "set_peers" in calls, "b carries lan now"
    store = net_b.overlay.store  # type: ignore[union-attr]
    assert [(r.port.ip, r.port.mac, r.host) for r in store.res] == [
        (nic["ip"], nic["mac"], "b")]
    assert sorted(store.hosts["lan"]) == ["a", "b"]
    # defined again on b (a migration's target makes its record): the same address
    copy = spec.model_copy(deep=True)
    nics.plan_nics(net_b, copy)
    assert (copy.nics[0].ip, copy.nics[0].mac) == (nic["ip"], nic["mac"])
    # b dropped it again once no VM of b uses it; the home keeps it
    await overlaynets.release_if_unused(net_b, "lan")
    assert sorted(store.hosts["lan"]) == ["a"] and "lan" not in net_b.db.networks


async def test_removal_is_refused_while_any_host_uses_it(
        hosts: dict[str, tuple[Manager, httpx.AsyncClient]]) -> None:
    (ma, a), (_mb, b) = hosts["a"], hosts["b"]
    await a.post("/v1/networks", json={"name": "lan", "subnet": "10.20.0.0/24"})
    await b.post("/v1/vms", json={"name": "vb", "nics": [{"network": "lan"}]})
    r = await a.delete("/v1/networks/lan")
    assert r.status_code == 409 and "vb (on b)" in r.text, r.text
    assert (await b.delete("/v1/vms/vb")).status_code in (200, 204)
    assert (await b.delete("/v1/networks/lan")).status_code == 204
    await overlaynets.sync(ma.runtime.hooks.net)  # the home sees it gone
    assert "lan" not in ma.runtime.hooks.net.db.networks
