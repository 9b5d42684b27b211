"""Live migration's state rules and rollbacks (:mod:`corral.service.clustermigrate` and
:mod:`corral.service.migratein`) between two Managers on fake machines: a source host ``s``
and a target host ``t``. The cluster store is a stand-in (which host owns which name, and
each host's API), and the host-to-host calls go straight to the target's service."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from corral.cli import render
from corral.config import Paths
from corral.domain.states import State
from corral.engine.fake import FakeDriver
from corral.errors import (
    AlreadyExists,
    CorralError,
    HostUnavailable,
    InvalidSpec,
    InvalidState,
    MigrationFailed,
    MonitorError,
    NoCapacity,
    NotFound,
)
from corral.service import clusterha, clustermigrate, migratein
from corral.service.clustermigrate import Asked
from corral.service.manager import Manager
from tests.unit.service.conftest import vm


class Names:
    """The cluster store's part: VM names and their hosts, hosts' APIs."""

    def __init__(self) -> None:
        self.owner: dict[str, str] = {}

    def peer(self, host: str) -> tuple[str, str, str] | None:
        return ("127.0.0.1:7443", "fp", "token") if host in ("s", "t") else None

    def owner_of(self, name: str) -> str | None:
        return self.owner.get(name)


class Host:
    """What the migration asks of a cluster member, on one Manager."""

    def __init__(self, m: Manager, name: str, names: Names) -> None:
        self.m, self.rt, self.name, self.cs = m, m.runtime, name, names
        self.sched = m._parts().sched
        self.departures: dict[str, Any] = {}
        self.arrivals = migratein.Arrivals(m.runtime, self.sched, name,
                                           ("127.0.0.1:7443", "fp"))
        self.state = {"s": "up", "t": "up"}

    async def hosts(self) -> list[dict[str, Any]]:
        return [{"name": n, "state": st, "arch": "x86_64"} for n, st in self.state.items()]

    async def beat(self) -> None:
        return None


@pytest.fixture
async def pair(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
               ) -> AsyncIterator[tuple[Host, Host, Names]]:
    names = Names()

    def take_over(store: Any, rec: Any, old: str) -> None:  # the name moves with the record
        if names.owner.get(rec.name) != old:
            raise AlreadyExists(f"VM '{rec.name}' is no longer on host {old}")
        names.owner[rec.name] = "t"
        store.add_vm(rec)

    monkeypatch.setattr(migratein.hostmoves, "take_over_vm", take_over)
    other = tmp_path / "home-t"
    shutil.copytree(home, other) if home.exists() else other.mkdir()
    ms = Manager(Paths(home), driver=FakeDriver())
    mt = Manager(Paths(other), driver=FakeDriver())
    await ms.open()
    await mt.open()
    s, t = Host(ms, "s", names), Host(mt, "t", names)
    try:
        yield s, t, names
    finally:
        await asyncio.sleep(0.01)
        await ms.close()
        await mt.close()
        # the target's fake machines outlive it too (the conftest clears only the source's)
        shutil.rmtree(Paths(other).outside, ignore_errors=True)


def calls(t: Host, log: list[str]) -> clustermigrate.PeerCall:
    """Host-to-host calls answered by ``t``'s service, as its routes would."""
    async def call(route: dict[str, Any], method: str, url: str, body: dict[str, Any] | None,
                   timeout: float) -> dict[str, Any]:
        name = url.split("/v1/cluster/migrate-in/")[1].split("?")[0].split("/")[0]
        log.append(f"{method} {url.split('?')[0].removeprefix('/v1/cluster/')}")
        if method == "DELETE":
            return await t.arrivals.abort(name)
        if url.split("?")[0].endswith("/outcome"):
            return await t.arrivals.outcome(name, timeout)
        return await t.arrivals.prepare(name, "s", body or {})
    return call


async def running(s: Host, names: Names, name: str = "a") -> None:
    await s.m.vms.create(vm(name), start=True)
    names.owner[name] = "s"


def nothing_on(t: Host, name: str) -> None:
    assert t.rt.db.get_vm(name) is None and name not in t.rt.live
    assert not t.rt.paths.vm_dir(name).exists() and not t.rt.run_dir(name).exists()
    assert t.sched.inventory.allocated.memory == 0
    assert t.arrivals.arriving == {}


async def test_a_running_vm_moves_and_the_source_forgets_it(pair: tuple[Host, Host, Names]
                                                            ) -> None:
    s, t, names = pair
    await running(s, names)
    before = s.rt.get("a")
    log: list[str] = []
    moved = await clustermigrate.migrate(s, "a", Asked("t"), calls(t, log))  # type: ignore[arg-type]
    assert moved["host"] == "t" and moved["state"] == "running"
    # encrypted by default (both hosts have cluster.migrate_tls), and show says so after
    assert moved["migration"]["encrypted"] is True and moved["migration"]["to"] == "t"
    assert moved["last_migration"]["encrypted"] is True
    assert moved["last_migration"]["source"] == "s"
    assert t.rt.view(t.rt.get("a"))["last_migration"] == moved["last_migration"]
    assert not list(t.rt.paths.vm_dir("a").glob(".migrate-tls*"))  # its credentials: gone
    assert log == ["POST migrate-in/a", "POST migrate-in/a/outcome"]
    assert names.owner["a"] == "t"
    after = t.rt.get("a")
    assert after.uid == before.uid and after.state == State.RUNNING
    assert [n.mac for n in after.spec.nics] == [n.mac for n in before.spec.nics]
    assert await t.rt.live["a"].machine.status() == "running"
    assert str(t.rt.paths.home) in str(after.spec.vmstate)
    # nothing of it is left on the source, its capacity is free there and held on the target
    assert s.rt.db.get_vm("a") is None and "a" not in s.rt.live
    assert not s.rt.paths.vm_dir("a").exists()
    assert s.sched.inventory.allocated.memory == 0
    assert t.sched.inventory.allocated.memory == 256 << 20


async def test_refused_before_anything_moves(pair: tuple[Host, Host, Names]) -> None:
    s, t, names = pair
    log: list[str] = []
    call = calls(t, log)
    await s.m.vms.create(vm("off"))
    with pytest.raises(InvalidState, match="running"):
        await clustermigrate.migrate(s, "off", Asked("t"), call)  # type: ignore[arg-type]
    await running(s, names)
    with pytest.raises(InvalidSpec, match="already on host s"):
        await clustermigrate.migrate(s, "a", Asked("s"), call)  # type: ignore[arg-type]
    with pytest.raises(NotFound, match="no host 'x'"):
        await clustermigrate.migrate(s, "a", Asked("x"), call)  # type: ignore[arg-type]
    s.state["t"] = "cordoned"
    with pytest.raises(CorralError, match="host t is cordoned"):
        await clustermigrate.migrate(s, "a", Asked("t"), call)  # type: ignore[arg-type]
    s.state["t"] = "up"
    with pytest.raises(InvalidState, match="migrating"):
        await clustermigrate.cancel(s, "a")  # type: ignore[arg-type]
    assert log == [] and s.rt.get("a").state == State.RUNNING
    nothing_on(t, "a")


async def test_a_target_without_room_or_image_makes_nothing(pair: tuple[Host, Host, Names]
                                                            ) -> None:
    s, t, names = pair
    await running(s, names)
    await t.m.vms.create(vm("big", memory="3900M"), start=True)  # 4 GiB host: no room left
    log: list[str] = []
    with pytest.raises(NoCapacity):
        await clustermigrate.migrate(s, "a", Asked("t"), calls(t, log))  # type: ignore[arg-type]
    assert log == ["POST migrate-in/a"]  # refused by the target; nothing to give up
    assert s.rt.get("a").state == State.RUNNING and names.owner["a"] == "s"
    assert t.rt.db.get_vm("a") is None and not t.rt.paths.vm_dir("a").exists()
    body = {"spec": {**s.rt.get("a").spec.model_dump(mode="json"), "image": "nope"}}
    with pytest.raises(NotFound, match="no image 'nope'"):
        await t.arrivals.prepare("a", "s", body)
    assert t.arrivals.arriving == {} and not t.rt.paths.vm_dir("a").exists()


async def test_a_failed_stream_leaves_it_running_on_the_source(
        pair: tuple[Host, Host, Names]) -> None:
    s, t, names = pair
    await running(s, names)
    s.rt.live["a"].machine.fail_next(  # type: ignore[attr-defined]
        "migrate_to", MonitorError("migrate", "GenericError", "Connection reset by peer"))
    log: list[str] = []
    with pytest.raises(MigrationFailed, match="Connection reset"):
        await clustermigrate.migrate(s, "a", Asked("t"), calls(t, log))  # type: ignore[arg-type]
    assert log == ["POST migrate-in/a", "DELETE migrate-in/a"]
    assert s.rt.get("a").state == State.RUNNING and names.owner["a"] == "s"
    assert await s.rt.live["a"].machine.status() == "running"
    assert s.departures == {}
    nothing_on(t, "a")


async def test_cancel_stops_it_and_the_target_removes_what_it_made(
        pair: tuple[Host, Host, Names]) -> None:
    s, t, names = pair
    await running(s, names)
    log: list[str] = []
    task = asyncio.create_task(clustermigrate.migrate(s, "a", Asked("t"), calls(t, log)))  # type: ignore[arg-type]
    # until the migration is under way (its first steps wait on threads: count time, not
    # turns of the loop)
    deadline = asyncio.get_running_loop().time() + 10
    while "a" not in s.departures:
        assert asyncio.get_running_loop().time() < deadline and not task.done()
        await asyncio.sleep(0.001)
    assert (await clustermigrate.cancel(s, "a"))["cancelled"]  # type: ignore[arg-type]
    with pytest.raises(MigrationFailed, match="cancelled"):
        await task
    assert s.rt.get("a").state == State.RUNNING and names.owner["a"] == "s"
    assert "DELETE migrate-in/a" in log
    nothing_on(t, "a")


async def test_the_target_gives_up_alone_when_its_qemu_dies(pair: tuple[Host, Host, Names]
                                                            ) -> None:
    s, t, names = pair
    await running(s, names)
    body = await clustermigrate._request(s, s.rt.get("a"), Asked("t"))  # type: ignore[arg-type]
    plan = await t.arrivals.prepare("a", "s", body)
    assert plan["uri"].startswith("tcp:127.0.0.1:") and "a" in t.arrivals.arriving
    assert t.sched.inventory.allocated.memory == 256 << 20
    with pytest.raises(AlreadyExists):
        await t.arrivals.prepare("a", "s", body)
    t.rt.live["a"].machine.kill()  # the stream broke: QEMU exits
    with pytest.raises(MigrationFailed, match="stream broke"):
        await t.arrivals.outcome("a", 10)
    nothing_on(t, "a")
    assert names.owner["a"] == "s"


async def test_a_lost_answer_to_the_request_for_a_place_is_given_up(
        pair: tuple[Host, Host, Names]) -> None:
    """A link cut while the target made the place: the source does not wait on it for
    ever, and the target removes what it made."""
    s, t, names = pair
    await running(s, names)
    log: list[str] = []
    answered = calls(t, log)
    timeouts: list[float] = []

    async def call(route: dict[str, Any], method: str, url: str, body: dict[str, Any] | None,
                   timeout: float) -> dict[str, Any]:
        answer = await answered(route, method, url, body, timeout)
        if method == "POST":  # made, but the answer does not come back
            timeouts.append(timeout)
            raise HostUnavailable("host t did not answer: timed out", "t")
        return answer

    with pytest.raises(MigrationFailed, match="link is cut"):
        await clustermigrate.migrate(s, "a", Asked("t"), call)  # type: ignore[arg-type]
    assert log == ["POST migrate-in/a", "DELETE migrate-in/a"]
    assert timeouts == [clustermigrate.PREPARE_TIMEOUT]
    assert s.rt.get("a").state == State.RUNNING and names.owner["a"] == "s"
    assert s.departures == {}
    nothing_on(t, "a")


async def test_a_target_without_tls_takes_it_in_clear_and_says_so(
        pair: tuple[Host, Host, Names], monkeypatch: pytest.MonkeyPatch) -> None:
    s, t, names = pair
    await running(s, names)
    real = migratein.settings.value
    monkeypatch.setattr(migratein, "settings", SimpleNamespace(
        value=lambda key: False if key == "cluster.migrate_tls" else real(key)))
    moved = await clustermigrate.migrate(s, "a", Asked("t"), calls(t, []))  # type: ignore[arg-type]
    assert moved["migration"]["encrypted"] is False
    assert moved["last_migration"]["encrypted"] is False
    assert "UNENCRYPTED" in render.vm_detail(moved)


async def test_a_heartbeat_at_the_switch_leaves_the_leaving_vm_to_its_migration(
        pair: tuple[Host, Host, Names]) -> None:
    """The name moves to the target before the source hears the outcome; the source's
    heartbeat in between (it fences the VMs other hosts own) leaves that VM to the migration,
    which reports the move and removes what is left here."""
    s, t, names = pair
    await running(s, names)
    answer = calls(t, [])
    mine = SimpleNamespace(owned_names=lambda: {n for n, h in names.owner.items() if h == "s"})
    fenced: list[str] = []

    async def call(route: dict[str, Any], method: str, url: str, body: dict[str, Any] | None,
                   timeout: float) -> dict[str, Any]:
        out = await answer(route, method, url, body, timeout)
        if url.split("?")[0].endswith("/outcome"):
            assert names.owner["a"] == "t"
            fenced.extend(await clusterha.fence_moved(s.rt, mine, s.departures))  # type: ignore[arg-type]
        return out

    moved = await clustermigrate.migrate(s, "a", Asked("t"), call)  # type: ignore[arg-type]
    assert moved["host"] == "t" and moved["migration"]["from"] == "s" and fenced == []
    assert s.rt.db.get_vm("a") is None and "a" not in s.rt.live
    assert not s.rt.paths.vm_dir("a").exists() and not s.rt.run_dir("a").exists()
    assert await t.rt.live["a"].machine.status() == "running"
