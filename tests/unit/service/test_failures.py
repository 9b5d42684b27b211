"""What goes wrong: launches that fail, machines that crash, guests that panic or hang, saves
that fail, and a daemon that restarts under running VMs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from corral.config import Paths
from corral.engine.fake import FakeDriver
from corral.errors import LaunchFailed, MonitorError, Timeout
from corral.service.manager import Manager

from .conftest import vm


def allocated(m: Manager) -> dict[str, Any]:
    return dict(m.host.info()["scheduler"]["capacity"]["allocated"])


async def settle(m: Manager, name: str, state: str, within: float = 2.0) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + within
    while (view := await m.vms.get(name))["state"] != state:
        assert asyncio.get_running_loop().time() < deadline, view
        await asyncio.sleep(0.005)
    return view


def boom() -> LaunchFailed:
    return LaunchFailed(["qemu-system-x86_64", "-name", "x"], 1,
                        "qemu-system-x86_64: -accel kvm: failed to initialize kvm",
                        what="QEMU would not start")


async def test_a_failed_launch_leaves_the_vm_as_before_and_nothing_behind(
        m: Manager, driver: FakeDriver, home: Path) -> None:
    await m.vms.create(vm("x"))
    driver.fail_next("launch", boom())
    with pytest.raises(LaunchFailed, match="failed to initialize kvm"):
        await m.vms.start("x")
    view = await m.vms.get("x")
    assert view["state"] == "defined" and view["pid"] is None
    assert "failed to initialize kvm" in (view["exit_reason"] or "")
    assert not (home / "run" / "x").exists() and allocated(m)["cpus"] == 0
    assert (await m.vms.start("x", wait=True, timeout=5))["state"] == "running"
    await m.vms.stop("x")
    driver.fail_next("launch", boom())
    with pytest.raises(LaunchFailed):
        await m.vms.start("x")
    assert (await m.vms.get("x"))["state"] == "stopped"


async def test_run_that_cannot_launch_defines_nothing(m: Manager, driver: FakeDriver,
                                                      home: Path) -> None:
    driver.fail_next("launch", boom())
    with pytest.raises(LaunchFailed):
        await m.vms.create(vm("once"), start=True, wait=True)
    assert m.vms.list() == [] and not (home / "vms" / "once").exists()


async def test_a_machine_killed_outside_corral_is_crashed(m: Manager, driver: FakeDriver,
                                                         home: Path) -> None:
    await m.vms.create(vm("k"), start=True, wait=True, timeout=5)
    driver.machine("k").crash()
    view = await settle(m, "k", "crashed")
    assert view["exit_reason"] == "QEMU killed by SIGKILL" and view["pid"] is None
    assert allocated(m)["cpus"] == 0 and not (home / "run" / "k").exists()
    assert "crashed" in [e["kind"] for e in m.vms.events(vm="k")]
    assert (await m.vms.start("k", wait=True, timeout=5))["state"] == "running"


async def test_a_guest_panic_crashes_the_vm(m: Manager, driver: FakeDriver) -> None:
    await m.vms.create(vm("pan"), start=True, wait=True, timeout=5)
    driver.machine("pan").panic()
    view = await settle(m, "pan", "crashed")
    assert view["exit_reason"] == "guest kernel panicked"


async def test_a_silent_agent_times_out_and_leaves_the_vm_running(m: Manager,
                                                                  driver: FakeDriver) -> None:
    driver.boot_delay = 10.0  # the guest never gets its agent up within the test
    with pytest.raises(Timeout):
        await m.vms.create(vm("mute"), start=True, wait=True, timeout=0.1)
    view = await m.vms.get("mute")
    assert view["state"] == "running" and not view["ready"]


async def test_failed_engine_calls_change_nothing(m: Manager, driver: FakeDriver) -> None:
    await m.vms.create(vm("e"), start=True, wait=True, timeout=5)
    machine = driver.machine("e")
    machine.fail_next("pause", MonitorError("stop", "GenericError", "refused"))
    with pytest.raises(MonitorError):
        await m.vms.pause("e")
    assert (await m.vms.get("e"))["state"] == "running"
    await m.vms.pause("e")
    machine.fail_next("cont", MonitorError("cont", "GenericError", "refused"))
    with pytest.raises(MonitorError):
        await m.vms.resume("e")
    assert (await m.vms.get("e"))["state"] == "paused"


async def test_events_from_qemu_itself_move_the_state(m: Manager, driver: FakeDriver) -> None:
    await m.vms.create(vm("q"), start=True, wait=True, timeout=5)
    machine = driver.machine("q")
    await machine.pause()  # as if someone paused it on the monitor
    await settle(m, "q", "paused")
    await machine.cont()
    await settle(m, "q", "running")


async def test_a_restarted_daemon_adopts_its_running_machines(home: Path) -> None:
    first = Manager(Paths(home), driver=FakeDriver())
    await first.open()
    await first.vms.create(vm("up"), start=True, wait=True, timeout=5)
    await first.vms.create(vm("held"), start=True, wait=True, timeout=5)
    await first.vms.pause("held")
    await first.vms.create(vm("gone"), start=True, wait=True, timeout=5)
    pids = {v["name"]: v["pid"] for v in first.vms.list()}
    await first.close()
    gone = FakeDriver._registry[Paths(home).run_dir("gone").absolute()]
    gone.crash()  # dies while no daemon watches

    driver = FakeDriver()
    second = Manager(Paths(home), driver=driver)
    await second.open()
    try:
        up = await second.vms.get("up")
        assert up["state"] == "running" and up["pid"] == pids["up"] and up["ready"]
        assert up["qemu_status"] == "running"
        assert (await second.vms.get("held"))["state"] == "paused"
        lost = await second.vms.get("gone")
        assert lost["state"] == "crashed" and "gone" in (lost["exit_reason"] or "")
        assert allocated(second)["cpus"] == 2
        assert (await second.vms.resume("held"))["state"] == "running"
        await second.vms.stop("up")
        assert (await second.vms.get("up"))["state"] == "stopped"
        assert not driver.machine("up").alive
    finally:
        await asyncio.sleep(0.01)  # see test_closing_right_after_capacity_changes_returns
        await second.close()


@pytest.mark.parametrize("trigger", ["exit", "timeslice"])
async def test_closing_right_after_capacity_changes_returns(m: Manager, driver: FakeDriver,
                                                            trigger: str) -> None:
    if trigger == "exit":
        await m.vms.create(vm("c"), start=True, wait=True, timeout=5)
        driver.machine("c").crash()
        await asyncio.sleep(0)  # the exit is reported: capacity released, the slicer woken
    else:
        await m.vms.create(vm("ts", timeslice=True), start=True)
    rt = m.runtime
    closing = asyncio.ensure_future(m.close())
    done, _ = await asyncio.wait({closing}, timeout=0.3)
    if not done:
        closing.cancel()
        rt.db.close()
    assert done, "Manager.close() hangs"
