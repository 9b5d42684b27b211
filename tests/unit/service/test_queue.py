"""The admission queue on a small host (4 CPUs, 4 GiB, no overcommit: see conftest)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from corral.engine.fake import FakeDriver
from corral.errors import InvalidState, NoCapacity
from corral.service.manager import Manager

from .conftest import vm


def allocated(m: Manager) -> dict[str, Any]:
    capacity = m.host.info()["scheduler"]["capacity"]
    return dict(capacity["allocated"])


async def settle(m: Manager, name: str, state: str, within: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while name not in (v["name"] for v in m.vms.list()) or \
            (await m.vms.get(name))["state"] != state:
        assert asyncio.get_running_loop().time() < deadline, m.vms.list()
        await asyncio.sleep(0.005)


async def test_a_full_host_queues_and_starts_the_vm_when_room_frees(m: Manager) -> None:
    for name in ("a", "b"):
        await m.vms.create(vm(name, cpus=2), start=True)
    assert allocated(m)["cpus"] == 4
    view = await m.vms.create(vm("c", cpus=2), start=True)
    assert view["state"] == "queued"
    assert [(e["vm"], e["position"]) for e in m.host.queue()] == [("c", 1)]
    with pytest.raises(NoCapacity):
        await m.vms.create(vm("d", cpus=1), start=True, queue=False)
    assert "d" not in [v["name"] for v in m.vms.list()]  # all or nothing

    await m.vms.stop("a")
    await settle(m, "c", "running")
    assert m.host.queue() == [] and allocated(m)["cpus"] == 4
    assert (await m.vms.wait_ready("c", 2))["ready"]


async def test_start_with_wait_waits_through_the_queue(m: Manager) -> None:
    await m.vms.create(vm("big", cpus=4), start=True)
    waiting = asyncio.ensure_future(m.vms.create(vm("next", cpus=4), start=True, wait=True,
                                                 timeout=5))
    await settle(m, "next", "queued")
    await m.vms.stop("big")
    view = await waiting
    assert view["state"] == "running" and view["ready"]


async def test_stopping_a_queued_vm_cancels_its_request(m: Manager) -> None:
    await m.vms.create(vm("big", cpus=4), start=True)
    await m.vms.create(vm("q", cpus=1), start=True)
    view = await m.vms.stop("q")
    assert view["state"] == "defined" and m.host.queue() == []
    await m.vms.stop("big")
    assert allocated(m)["cpus"] == 0


async def storm(m: Manager, names: list[str], verbs: list[str], seed: int) -> None:
    """Many racing operations on a few VMs; refused moves are fine, leaks are not."""
    rng = random.Random(seed)

    async def act(name: str, verb: str) -> None:
        await asyncio.sleep(rng.random() * 0.01)
        try:
            if verb == "shutdown":
                await m.vms.shutdown(name, timeout=0.5)
            else:
                await getattr(m.vms, verb)(name)
        except InvalidState:
            pass  # the storm asks for many moves that the VM's state does not allow

    for _ in range(4):
        await asyncio.gather(*(act(rng.choice(names), rng.choice(verbs)) for _ in range(30)))
    await asyncio.sleep(0.05)


async def at_rest(m: Manager, driver: FakeDriver, names: list[str]) -> None:
    """Stop whatever still runs or waits, then check nothing is held or left running."""
    for name in names:
        if (await m.vms.get(name))["state"] in ("queued", "running", "paused", "starting",
                                                 "stopping"):
            await m.vms.stop(name)
    await asyncio.sleep(0.05)
    states = {name: (await m.vms.get(name))["state"] for name in names}
    assert set(states.values()) <= {"defined", "stopped", "saved", "crashed"}, states
    assert not [machine for machine in driver.launched if machine.alive]
    assert m.host.queue() == []
    assert allocated(m)["cpus"] == 0 and allocated(m)["memory"] == 0, states


@pytest.mark.parametrize("seed", [1, 9])
async def test_capacity_returns_to_zero_after_a_storm_of_lifecycle_verbs(
        m: Manager, driver: FakeDriver, seed: int) -> None:
    driver.latency = 0.0005  # every engine call takes a turn of the loop or more
    names = [f"v{i}" for i in range(6)]
    for name in names:
        await m.vms.create(vm(name, cpus=1, memory="512M"))
    await storm(m, names, ["start", "start", "stop", "pause", "resume", "shutdown", "reboot"],
                seed)
    await at_rest(m, driver, names)


async def test_capacity_returns_to_zero_after_a_storm_of_saves_and_restores(
        m: Manager, driver: FakeDriver) -> None:
    driver.latency = 0.0005
    names = [f"v{i}" for i in range(6)]
    for name in names:  # 6 VMs of 1 vCPU on 4: two wait in the queue
        await m.vms.create(vm(name, cpus=1, memory="512M"), start=True)
    await storm(m, names, ["save", "restore", "start", "restore", "pause", "resume", "stop"], 5)
    await at_rest(m, driver, names)


async def test_a_start_racing_a_save_restores_the_vm_and_leaks_nothing(m: Manager) -> None:
    await m.vms.create(vm("r", cpus=1), start=True, wait=True, timeout=5)
    saving = asyncio.ensure_future(m.vms.save("r"))
    await asyncio.sleep(0)  # the save holds the VM's lock now
    starting = asyncio.ensure_future(m.vms.start("r"))
    await saving
    try:
        view = await starting
    finally:
        live = sum(v["cpus"] for v in m.vms.list() if v["pid"] is not None)
        assert allocated(m)["cpus"] == live, m.vms.list()
    assert view["state"] == "running"


async def test_a_saved_vm_started_on_a_full_host_is_queued(m: Manager) -> None:
    await m.vms.create(vm("s", cpus=2), start=True, wait=True, timeout=5)
    await m.vms.save("s")
    await m.vms.create(vm("hog", cpus=4), start=True)
    view = await m.vms.start("s")  # queue=True is the default
    assert view["state"] == "queued"
    await m.vms.stop("hog")
    await settle(m, "s", "running")
