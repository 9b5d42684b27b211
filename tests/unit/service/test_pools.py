"""Warm pools through the service on fake machines: filling, hand-outs (renamed, running,
their own identity), misses, crashed clones, a snapshot that goes away, a daemon restart."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from corral.config import Paths
from corral.engine.fake import FakeDriver
from corral.errors import AlreadyExists, InvalidSpec, InvalidState, NotFound, Timeout
from corral.service.manager import Manager

from .conftest import vm


@pytest.fixture
def home(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A host with room for a golden VM, full pools and the VMs they hand out."""
    monkeypatch.setenv("CORRAL_HOST_CPUS", "12")
    monkeypatch.setenv("CORRAL_HOST_MEMORY", "12G")
    return home


async def golden(m: Manager) -> None:
    await m.vms.create(vm("gold"), start=True, wait=True, timeout=5)
    await m.guest.write_file("gold", "/root/app", b"warm")
    await m.snapshots.create("gold", "base", memory=True, template=True)


async def filled(m: Manager, pool: str, size: int, timeout: float = 10.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = m.pools.get(pool)
        if view["free"] == size and not view["filling"]:
            return view
        await asyncio.sleep(0.01)
    raise AssertionError(f"pool {pool} did not fill to {size}: {m.pools.get(pool)}")


async def test_template_at_snapshot_time(m: Manager, home: Path) -> None:
    await golden(m)
    assert (home / "vms" / "gold" / "templates" / "base" / "template.json").is_file()
    assert [s["template"] for s in m.snapshots.list("gold")] == [True]
    with pytest.raises(InvalidSpec):
        await m.snapshots.create("gold", "disk", template=True)


async def test_pool_hands_out_running_vms_with_their_own_identity_and_refills(
        m: Manager, driver: FakeDriver, home: Path) -> None:
    await golden(m)
    await m.pools.create("py", "gold:base", 3)
    await filled(m, "py", 3)
    views = [await m.pools.take("py", f"job{i}") for i in range(3)]
    assert all(v["state"] == "running" and v["ready"] and v["pool"]["hit"] for v in views)
    assert len({v["nics"][0]["mac"] for v in views}) == 3
    for v in views:
        name = v["name"]
        assert (home / "vms" / name / "serial.log").is_file()
        assert not (home / "vms" / v["pool"]["clone"]).exists()
        assert await m.guest.read_file(name, "/root/app") == b"warm"
        machine = driver.machine(name)
        for _ in range(200):
            if machine.guest.hostname == name:
                break
            await asyncio.sleep(0.005)
        assert machine.guest.hostname == name
        assert m.host.sched.inventory.reservations.get(name) is not None
    await filled(m, "py", 3)
    stats = m.pools.get("py")
    assert stats["handouts"] == 3 and stats["misses"] == 0
    assert stats["refill_seconds"] is not None and stats["handout_seconds"] is not None
    await m.vms.pause("job0")  # a handed-out VM is an ordinary VM
    await m.vms.rm("job0")
    with pytest.raises(AlreadyExists):
        await m.pools.take("py", "job1")
    with pytest.raises(NotFound):
        await m.pools.take("nope", "x")
    assert sorted(await m.pools.rm("py")) == sorted(stats["clones"])
    assert sorted(v["name"] for v in m.vms.list()) == ["gold", "job1", "job2"]


async def test_empty_pool_misses_into_a_warm_start_or_waits(m: Manager) -> None:
    await golden(m)
    await m.pools.create("p", "gold:base", 0)
    view = await m.pools.take("p", "w1")
    assert view["state"] == "running" and not view["pool"]["hit"]
    with pytest.raises(Timeout):
        await m.pools.take("p", "w2", pool_only=True, timeout=0.2)
    assert m.pools.get("p")["misses"] == 2
    m.pools.resize("p", 1)
    view = await m.pools.take("p", "w3", pool_only=True, timeout=10)
    assert view["pool"]["hit"]


async def test_crashed_clone_is_replaced_and_counted(m: Manager, driver: FakeDriver) -> None:
    await golden(m)
    await m.pools.create("p", "gold:base", 2)
    first = await filled(m, "p", 2)
    victim = first["clones"][0]
    driver.machine(victim).crash()
    deadline = time.monotonic() + 10
    while m.pools.get("p")["replaced"] < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    view = await filled(m, "p", 2)
    assert view["replaced"] == 1 and victim not in view["clones"]
    assert victim not in [v["name"] for v in m.vms.list()]


async def test_pool_on_a_full_host_holds_what_fits_and_says_so(
        m: Manager, monkeypatch: pytest.MonkeyPatch) -> None:
    await golden(m)
    for i in range(9):  # 10 of the 12 vCPUs taken
        await m.vms.create(vm(f"big{i}"), start=True, timeout=5)
    await m.pools.create("p", "gold:base", 4)
    deadline = time.monotonic() + 10
    while "host is full" not in (m.pools.get("p")["note"] or "") \
            and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    view = m.pools.get("p")
    assert view["free"] == 2 and "holds 2 of 4" in view["note"]


async def test_batch_through_a_pool(m: Manager) -> None:
    await golden(m)
    await m.pools.create("p", "gold:base", 1)
    await filled(m, "p", 1)
    res = await m.pools.batch("p", ["sh", "-c", "cat /root/app; exit 3"], timeout=10)
    assert res["exitcode"] == 3 and res["pool"]["hit"]
    assert res["name"] not in [v["name"] for v in m.vms.list()]


async def test_pool_whose_snapshot_goes_is_drained(m: Manager) -> None:
    await golden(m)
    with pytest.raises(NotFound):
        await m.pools.create("p", "gold:nope", 1)
    await m.snapshots.create("gold", "disk")
    with pytest.raises(InvalidSpec):
        await m.pools.create("p", "gold:disk", 1)
    await m.pools.create("p", "gold:base", 1)
    await filled(m, "p", 1)
    await m.snapshots.rm("gold", "base")
    m.pools.resize("p", 2)
    deadline = time.monotonic() + 10
    while not m.pools.get("p")["drained"] and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    view = m.pools.get("p")
    assert view["drained"] and "drained" in view["note"] and view["free"] == 0
    assert [v["name"] for v in m.vms.list()] == ["gold"]
    # a hand-out that may only come from the pool says why it cannot, and what to do
    with pytest.raises(InvalidState) as refused:
        await m.pools.take("p", "w", pool_only=True, timeout=1)
    assert str(refused.value) == (
        "cannot take a VM from pool 'p': it is drained: VM 'gold' has no snapshot 'base'; "
        "see 'corral snapshot list gold'; remove the pool ('corral pool rm p')"), refused.value
    # one that may fall back to a warm start says the snapshot is gone; both are misses
    with pytest.raises(NotFound, match="no snapshot 'base'"):
        await m.pools.take("p", "w", timeout=1)
    assert m.pools.get("p")["misses"] == 2


async def test_restart_takes_up_the_pool_and_its_clones(home: Path, driver: FakeDriver
                                                        ) -> None:
    first = Manager(Paths(home), driver=driver)
    await first.open()
    await golden(first)
    await first.pools.create("p", "gold:base", 2)
    before = await filled(first, "p", 2)
    handed = await first.pools.take("p", "mine")
    await first.close()
    second = Manager(Paths(home), driver=driver)
    await second.open()
    try:
        view = await filled(second, "p", 2)
        assert set(before["clones"]) - {handed["pool"]["clone"]} <= set(view["clones"])
        assert second.vms.list()[0]["name"] == "gold"
        mine = await second.vms.get("mine")
        assert mine["state"] == "running"  # the renamed VM was adopted under its new name
        await second.vms.pause("mine")
        assert (await second.pools.take("p", "again"))["pool"]["hit"]
    finally:
        await second.close()


async def test_autosize_applies_the_model_to_the_requests_it_sees(m: Manager) -> None:
    await golden(m)
    await m.pools.create("p", "gold:base", 3, max_size=5, autosize=True, target_wait=0.05)
    await filled(m, "p", 3)
    for i in range(3):  # 3 requests a minute with refills of milliseconds: 1 clone will do
        await m.pools.take("p", f"t{i}")
    deadline = time.monotonic() + 10
    while m.pools.get("p")["size"] != 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    view = await filled(m, "p", 1)
    assert view["size"] == 1 and "autosized to 1" in view["note"]
    with pytest.raises(InvalidSpec):
        m.pools.resize("p", 6, max_size=5)


async def settled(m: Manager) -> None:
    """Wait for the daemon's background work (templates being made) to finish."""
    tasks = m.vms.rt._tasks
    while tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_template_made_in_the_background_after_a_memory_snapshot(
        m: Manager, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    await m.vms.create(vm("gold"), start=True, wait=True, timeout=5)
    templates = home / "vms" / "gold" / "templates"
    snap = await m.snapshots.create("gold", "base", memory=True)
    assert snap["template"] is False  # the answer did not wait for it
    await settled(m)
    assert (templates / "base" / "template.json").is_file()
    assert [s["template"] for s in m.snapshots.list("gold")] == [True]
    assert "template_made" in [e["kind"] for e in m.vms.events(vm="gold")]
    # a snapshot removed at once leaves no template (its removal waits for the making)
    await m.snapshots.create("gold", "gone", memory=True)
    await m.snapshots.rm("gold", "gone")
    await m.snapshots.create("gold", "disk")  # no running state: no template
    monkeypatch.setenv("CORRAL_BACKGROUND_TEMPLATE", "0")
    await m.snapshots.create("gold", "off", memory=True)
    await settled(m)
    assert sorted(p.name for p in templates.iterdir()) == ["base"]
    # a VM removed while its template is being made leaves nothing either
    monkeypatch.delenv("CORRAL_BACKGROUND_TEMPLATE")
    await m.snapshots.create("gold", "late", memory=True)
    await m.vms.rm("gold")
    await settled(m)
    assert not (home / "vms" / "gold").exists()


async def test_refills_wait_behind_the_queue_unless_ahead_of_queue(m: Manager) -> None:
    await golden(m)
    for i in range(9):  # 10 of the 12 vCPUs taken
        await m.vms.create(vm(f"big{i}"), start=True, timeout=5)
    waiting = await m.vms.create(vm("waiter", cpus=4), start=True, timeout=5)
    assert waiting["state"] == "queued"
    await m.pools.create("p", "gold:base", 2)
    deadline = time.monotonic() + 10
    while "waiting ahead" not in (m.pools.get("p")["note"] or "") \
            and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    view = m.pools.get("p")
    assert view["free"] == 0 and "holds 0 of 2" in view["note"], view
    assert not view["ahead_of_queue"]
    view = m.pools.resize("p", 2, ahead_of_queue=True)  # configured to go ahead
    assert view["ahead_of_queue"]
    view = await filled(m, "p", 2)
    assert view["note"] is None
    assert (await m.vms.get("waiter"))["state"] == "queued"
    await m.pools.rm("p")
    for i in range(2):  # room for the waiter: it starts
        await m.vms.rm(f"big{i}")
    deadline = time.monotonic() + 10
    while (await m.vms.get("waiter"))["state"] != "running" and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert (await m.vms.get("waiter"))["state"] == "running"


async def test_free_clones_give_way_to_a_vm_queued_after_the_pool_filled(m: Manager) -> None:
    """Idle clones are not kept from a VM someone asked for: they go, one at a time, until
    it starts, and the pool says so; it fills again once nobody waits."""
    await golden(m)
    for i in range(6):  # 7 of the 12 vCPUs taken
        await m.vms.create(vm(f"big{i}"), start=True, timeout=5)
    await m.pools.create("p", "gold:base", 5)
    await filled(m, "p", 5)  # the host is full
    waiting = await m.vms.create(vm("waiter", cpus=3), start=True, timeout=5)
    assert waiting["state"] == "queued"
    deadline = time.monotonic() + 10
    while (await m.vms.get("waiter"))["state"] != "running" and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert (await m.vms.get("waiter"))["state"] == "running"
    view = m.pools.get("p")
    assert view["free"] == 2 and "gave way to 1 VM waiting in the queue" in view["note"], view
    await m.vms.rm("waiter")
    view = await filled(m, "p", 5)
    assert view["note"] is None, view
    for i in range(6):  # the pool's own VMs were not touched
        assert (await m.vms.get(f"big{i}"))["state"] == "running"


async def test_no_background_template_where_the_disk_cannot_hold_it(
        m: Manager, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from corral.service import warm

    monkeypatch.setattr(warm, "DISK_RESERVE", 1 << 60)  # no host disk is that large
    await m.vms.create(vm("gold"), start=True, wait=True, timeout=5)
    await m.snapshots.create("gold", "base", memory=True)
    await settled(m)
    skipped = [e for e in m.vms.events(vm="gold") if e["kind"] == "template_skipped"]
    assert skipped and "host's disk" in skipped[0]["detail"]["reason"], skipped
    assert not (home / "vms" / "gold" / "templates" / "base").exists()
    view = await m.vms.create({"name": "w", "from_snapshot": "gold:base"}, start=True)
    assert view["state"] == "running"  # the first warm start makes it as before


async def _making(m: Manager, pool: str) -> str:
    """The clone ``pool`` is making, once it runs (it then waits for its guest agent)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        making = m.pools.get(pool)["filling"]
        if making is not None and {"name": making, "state": "running"} in [
                {"name": v["name"], "state": v["state"]} for v in m.vms.list()]:
            return str(making)
        await asyncio.sleep(0.001)
    raise AssertionError(f"pool {pool} made no clone: {m.pools.get(pool)}")


async def test_a_clone_cut_short_by_a_daemon_stop_or_a_pool_removal_goes(
        home: Path, driver: FakeDriver) -> None:
    first = Manager(Paths(home), driver=driver)
    await first.open()
    await golden(first)
    await first.pools.create("p", "gold:base", 1)
    cut = await _making(first, "p")
    await first.close()  # while it makes the clone: the next daemon removes it
    second = Manager(Paths(home), driver=driver)
    await second.open()
    try:
        view = await filled(second, "p", 1)
        assert {v["name"] for v in second.vms.list()} == {"gold", *view["clones"]} and \
            cut not in view["clones"]
        await second.pools.take("p", "job")
        cut = await _making(second, "p")  # the replacement
        assert await second.pools.rm("p") == []
        assert {v["name"] for v in second.vms.list()} == {"gold", "job"}
    finally:
        await second.close()
