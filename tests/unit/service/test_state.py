"""Saved state, snapshots and warm starts through the service on fake machines."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from corral.engine.fake import FakeDriver
from corral.errors import CorralError, InvalidSpec, InvalidState, NotFound
from corral.service.manager import Manager

from .conftest import vm


async def running(m: Manager, name: str, **extra: object) -> None:
    await m.vms.create(vm(name, **extra), start=True, wait=True, timeout=5)


async def test_save_and_restore_bring_a_running_vm_back_with_its_memory(
        m: Manager, driver: FakeDriver, home: Path) -> None:
    await running(m, "s")
    await m.guest.write_file("s", "/root/note", b"in RAM only")
    first = driver.machine("s")
    view = await m.vms.save("s")
    assert view["state"] == "saved" and not first.alive
    state = home / "vms" / "s" / "saved.state"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert not [p for p in state.parent.iterdir() if ".tmp-" in p.name]

    view = await m.vms.start("s", wait=True, timeout=5)  # start restores a saved VM
    assert view["state"] == "running" and driver.machine("s") is not first
    assert await m.guest.read_file("s", "/root/note") == b"in RAM only"
    assert not state.exists()  # a managed save is used up
    kinds = [e["kind"] for e in m.vms.events(vm="s")]
    assert "state_written" in kinds and "restored" in kinds


async def test_a_paused_vm_comes_back_paused_and_its_state_downloads_whole(
        m: Manager, driver: FakeDriver, home: Path) -> None:
    await running(m, "p")
    await m.vms.pause("p")
    with pytest.raises(InvalidState, match="needs saved"):
        async with m.vms.saved_state("p"):
            pass
    await m.vms.save("p")
    async with m.vms.saved_state("p") as (size, chunks):
        assert m.runtime.busy("p")  # held still: no restore uses the file up meanwhile
        data = b"".join([chunk async for chunk in chunks])
    assert size == len(data) > 0 and data == (home / "vms" / "p" / "saved.state").read_bytes()
    view = await m.vms.restore("p")
    assert view["state"] == "paused" and await driver.machine("p").status() == "paused"


async def test_a_damaged_state_leaves_the_vm_saved_with_its_file(
        m: Manager, driver: FakeDriver, home: Path) -> None:
    await running(m, "d")
    await m.vms.save("d")
    state = home / "vms" / "d" / "saved.state"
    state.write_bytes(b"\x00not a state")
    with pytest.raises(CorralError, match="saved state is kept"):
        await m.vms.restore("d")
    view = await m.vms.get("d")
    assert view["state"] == "saved" and state.read_bytes() == b"\x00not a state"
    assert not driver.machine("d").alive and not (home / "run" / "d").exists()
    assert m.host.info()["scheduler"]["capacity"]["allocated"]["cpus"] == 0


async def test_a_failed_save_leaves_the_vm_running(m: Manager, driver: FakeDriver,
                                                   home: Path) -> None:
    await running(m, "f")
    driver.fail_next("save_state", CorralError("cannot write the state: disk on fire"))
    with pytest.raises(CorralError, match="disk on fire"):
        await m.vms.save("f")
    view = await m.vms.get("f")
    assert view["state"] == "running" and view["qemu_status"] == "running"
    assert not (home / "vms" / "f" / "saved.state").exists()
    assert "save_failed" in [e["kind"] for e in m.vms.events(vm="f")]


async def test_snapshots_disk_and_memory_revert_rm_and_tree(m: Manager,
                                                            driver: FakeDriver) -> None:
    await running(m, "t")
    await m.guest.write_file("t", "/root/v", b"one")
    s1 = await m.snapshots.create("t", "s1", memory=True)
    assert s1["memory"] and s1["parent"] is None
    await m.guest.write_file("t", "/root/v", b"two")
    await m.snapshots.create("t", "s2")
    with pytest.raises(CorralError):
        await m.snapshots.create("t", "s2")

    view = await m.snapshots.revert("t", "s1")  # memory: back at that moment, still running
    assert view["state"] == "running"
    assert await m.guest.read_file("t", "/root/v") == b"one"
    await m.snapshots.create("t", "s3")
    assert [(s["name"], s["depth"], s["current"]) for s in m.snapshots.list("t")] == [
        ("s1", 0, False), ("s2", 1, False), ("s3", 1, True)]

    view = await m.snapshots.revert("t", "s2")  # disk only: the VM boots from its disks
    assert view["state"] in ("running", "starting")
    assert (await m.vms.wait_ready("t", 5))["state"] == "running"

    await m.snapshots.rm("t", "s1")
    assert [(s["name"], s["depth"]) for s in m.snapshots.list("t")] == [("s2", 0), ("s3", 0)]
    await m.vms.stop("t")
    with pytest.raises(InvalidSpec):
        await m.snapshots.create("t", "cold", memory=True)
    await m.snapshots.create("t", "cold")
    await m.snapshots.rm("t", "cold")


async def test_a_stopped_vm_reverts_to_a_memory_snapshot_running(m: Manager,
                                                                 driver: FakeDriver) -> None:
    await running(m, "r")
    await m.guest.write_file("r", "/root/v", b"kept")
    await m.snapshots.create("r", "live", memory=True)
    await m.vms.stop("r")
    view = await m.snapshots.revert("r", "live")
    assert view["state"] == "running"
    await m.vms.wait_ready("r", 5)
    assert await m.guest.read_file("r", "/root/v") == b"kept"


async def test_warm_start_from_a_memory_snapshot(m: Manager, driver: FakeDriver) -> None:
    await running(m, "src")
    await m.guest.write_file("src", "/root/app", b"warmed up")
    await m.snapshots.create("src", "base", memory=True)
    view = await m.vms.create(vm("w1", from_snapshot="src:base"), wait=True, timeout=5)
    assert view["state"] == "running" and view["ready"]
    assert await m.guest.read_file("w1", "/root/app") == b"warmed up"
    clone = driver.machine("w1")
    assert clone.ram_file is not None and not clone.ram_file.shared

    async def identity() -> bool:
        return clone.guest.hostname == "w1" and clone.guest.macs == [view["nics"][0]["mac"]]

    for _ in range(100):  # the identity fix follows readiness, in the background
        if await identity():
            break
        await asyncio.sleep(0.005)
    assert await identity()

    second = await m.vms.create(vm("w2", from_snapshot="src:base"), wait=True, timeout=5)
    assert second["state"] == "running"
    with pytest.raises(NotFound):
        await m.vms.create(vm("w3", from_snapshot="src:nope"), wait=True, timeout=5)
    assert "w3" not in [v["name"] for v in m.vms.list()]
    await m.snapshots.create("src", "disk-only")
    with pytest.raises(InvalidSpec):
        await m.vms.create(vm("w4", from_snapshot="src:disk-only"), wait=True, timeout=5)


async def test_save_and_restore_refused_where_illegal(m: Manager) -> None:
    await m.vms.create(vm("n"))
    with pytest.raises(InvalidState) as err:
        await m.vms.save("n")
    assert err.value.state == "defined" and "running" in err.value.required
