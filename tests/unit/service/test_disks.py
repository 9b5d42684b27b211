"""Named disks on running fake machines: hot-plug, live resize, release by the guest."""

from __future__ import annotations

import pytest

from corral.engine.fake import FakeDriver
from corral.errors import InvalidState, Timeout
from corral.service.manager import Manager

from .conftest import vm


async def test_attach_resize_and_detach_on_a_running_vm(m: Manager, driver: FakeDriver
                                                        ) -> None:
    await m.disks.create("data", "64M")
    await m.vms.create(vm("h"), start=True, wait=True, timeout=5)
    view = await m.disks.attach("h", "data", iops=100)
    assert [d["name"] for d in view["disks"]].count("data") == 1
    machine = driver.machine("h")
    node = next(n for n, d in machine.disks.items() if d.name == "data")
    assert machine.io_limits[node] == (100, 0)

    await m.disks.resize("data", "128M")
    assert machine.sizes[node] == 128 << 20

    with pytest.raises(InvalidState) as err:
        await m.disks.rm("data")
    assert err.value.state == "attached to 'h'"
    view = await m.disks.detach("h", "data")
    assert "data" not in [d["name"] for d in view["disks"]] and node not in machine.disks
    await m.disks.rm("data")


async def test_a_disk_the_guest_keeps_stays_attached(m: Manager, driver: FakeDriver) -> None:
    await m.disks.create("slow", "64M")
    await m.vms.create(vm("z"), start=True, wait=True, timeout=5)
    await m.disks.attach("z", "slow")
    driver.machine("z").hang("acpi", seconds=0.05)  # it ignores the unplug request
    with pytest.raises(Timeout):
        await m.disks.detach("z", "slow")
    view = await m.vms.get("z")
    assert "slow" in [d["name"] for d in view["disks"]]  # still attached, as the guest has it


async def test_a_disk_survives_a_restart_of_its_vm(m: Manager, driver: FakeDriver) -> None:
    await m.disks.create("keep", "64M")
    await m.vms.create(vm("r"), start=True, wait=True, timeout=5)
    await m.disks.attach("r", "keep")
    await m.vms.stop("r")
    await m.vms.start("r", wait=True, timeout=5)
    assert any(d.name == "keep" for d in driver.machine("r").disks.values())
