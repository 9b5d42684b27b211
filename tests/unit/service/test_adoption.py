"""A daemon that dies in the middle of an operation: the next one settles what it left.

The first daemon's operation is stuck on a machine whose monitor hangs; the daemon is then
closed without the operation finishing or rolling back (as if it were killed), and a second
Manager on the same home adopts the machine."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import pytest

from corral.config import Paths
from corral.engine.fake import FakeDriver, FakeMachine
from corral.service.manager import Manager

from .conftest import vm


@contextlib.asynccontextmanager
async def dies_during(first: Manager, operation: Awaitable[object]) -> AsyncIterator[None]:
    """Run ``operation`` until it is stuck, then let the daemon go without it; the stuck task
    is thrown away at the end (its late rollback hits a closed store and is ignored)."""
    task = asyncio.ensure_future(operation)
    await asyncio.sleep(0.05)
    assert not task.done(), task
    await first.close()
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


async def reopen(home: Path) -> tuple[Manager, FakeDriver]:
    driver = FakeDriver()
    second = Manager(Paths(home), driver=driver)
    await second.open()
    return second, driver


async def test_a_restore_cut_short_leaves_the_vm_saved_with_its_file(home: Path) -> None:
    driver = FakeDriver()
    first = Manager(Paths(home), driver=driver)
    await first.open()
    await first.vms.create(vm("r"), start=True, wait=True, timeout=5)
    await first.vms.save("r")
    state = home / "vms" / "r" / "saved.state"
    stuck: list[FakeMachine] = []

    def hang(machine: FakeMachine) -> None:
        machine.hang("monitor")
        stuck.append(machine)

    driver.on_launch = hang
    async with dies_during(first, first.vms.restore("r")):
        stuck[0].unhang("monitor")
        second, _ = await reopen(home)
        try:
            view = await second.vms.get("r")
            assert view["state"] == "saved" and state.is_file(), view
            assert not stuck[0].alive
            assert (await second.vms.restore("r", wait=True, timeout=5))["state"] == "running"
        finally:
            await asyncio.sleep(0.01)
            await second.close()


@pytest.mark.parametrize("paused", [False, True])
async def test_a_save_cut_short_leaves_the_vm_as_its_machine_is_and_no_partial_file(
        home: Path, paused: bool) -> None:
    driver = FakeDriver()
    first = Manager(Paths(home), driver=driver)
    await first.open()
    await first.vms.create(vm("s"), start=True, wait=True, timeout=5)
    if paused:
        await first.vms.pause("s")
    machine = driver.machine("s")
    tmp = home / "vms" / "s" / ".saved.state.tmp-left-behind"
    machine.hang("monitor")
    async with dies_during(first, first.vms.save("s")):
        tmp.write_bytes(b"half a state")  # what a killed save would leave
        machine.unhang("monitor")
        second, _ = await reopen(home)
        try:
            view = await second.vms.get("s")
            # the save never paused a running guest: it still runs, and the VM says so
            assert view["state"] == ("paused" if paused else "running") and machine.alive, view
            assert not tmp.exists() and not (home / "vms" / "s" / "saved.state").exists()
            if paused:
                assert (await second.vms.resume("s"))["state"] == "running"
        finally:
            await asyncio.sleep(0.01)
            await second.close()


async def test_a_machine_in_a_run_directory_no_record_owns_is_ended_and_swept(
        home: Path) -> None:
    # a daemon that died while a QEMU waited for an incoming migration: the QEMU has a run
    # directory (pidfile, sockets) but the VM was never recorded here
    run = Paths(home).run / "arriving"
    run.mkdir(parents=True)
    (run / "qemu.pid").write_text("4242\n")
    (run / "qmp.sock").touch()
    second, driver = await reopen(home)
    try:
        assert driver.orphans_ended == ["arriving"]
        assert not run.exists()
    finally:
        await second.close()
