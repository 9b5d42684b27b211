"""A VM's whole life through the service on fake machines: the states it passes, the events
it records, the transitions it refuses, and the guest it runs."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path

import pytest

from corral.engine.fake import FakeDriver
from corral.errors import AgentError, InvalidState, NotFound
from corral.service.manager import Manager

from .conftest import vm


def kinds(m: Manager, name: str) -> list[str]:
    return [e["kind"] for e in m.vms.events(vm=name)]


async def settle(m: Manager, name: str, state: str, within: float = 2.0) -> dict[str, object]:
    """Wait until ``name`` is ``state`` (events and exits arrive on the loop)."""
    deadline = asyncio.get_running_loop().time() + within
    while (view := await m.vms.get(name))["state"] != state:
        assert asyncio.get_running_loop().time() < deadline, view
        await asyncio.sleep(0.005)
    return view


async def test_the_whole_life_of_a_vm(m: Manager, driver: FakeDriver, home: Path) -> None:
    view = await m.vms.create(vm("web"), start=True, wait=True)
    assert view["state"] == "running" and view["ready"] and view["boot_seconds"] is not None
    machine = driver.machine("web")
    assert view["pid"] == machine.pid and (await m.vms.get("web"))["qemu_status"] == "running"

    assert (await m.vms.pause("web"))["state"] == "paused"
    assert await machine.status() == "paused"
    assert (await m.vms.resume("web"))["state"] == "running"

    await m.vms.reboot("web", wait=True, timeout=2)
    assert (await m.vms.get("web"))["ready"]

    view = await m.vms.shutdown("web", timeout=2)
    assert view["state"] == "stopped" and view["exit_reason"] == "shut down"
    assert not machine.alive and not (home / "run" / "web").exists()

    assert (await m.vms.start("web", wait=True, timeout=2))["state"] == "running"
    view = await m.vms.stop("web")
    assert view["state"] == "stopped" and view["exit_reason"] == "forced off"
    assert driver.machine("web").exit is not None

    await m.vms.rm("web")
    assert not (home / "vms" / "web").exists()
    with pytest.raises(NotFound):
        await m.vms.get("web")
    assert kinds(m, "web") == [
        "created", "requested", "starting", "started", "ready", "paused", "running",
        "reset", "rebooted", "ready", "shutdown_requested", "stopped",
        "requested", "starting", "started", "ready",
        "stop_requested", "stopped",  # written before QEMU quits (a daemon dying meanwhile)
        "destroyed"]


async def test_a_paused_vm_shuts_down_by_the_power_button(m: Manager, driver: FakeDriver
                                                           ) -> None:
    await m.vms.create(vm("p"), start=True, wait=True)
    await m.vms.pause("p")
    view = await m.vms.shutdown("p", timeout=2)
    assert view["state"] == "stopped" and view["exit_reason"] == "shut down"
    assert driver.machine("p").exit is not None and driver.machine("p").exit.returncode == 0


async def test_a_guest_ignoring_shutdown_is_forced_off(m: Manager, driver: FakeDriver) -> None:
    await m.vms.create(vm("deaf"), start=True)
    driver.machine("deaf").hang("acpi")  # no agent yet, and the button goes unheard
    view = await m.vms.shutdown("deaf", timeout=0.05)
    assert view["state"] == "stopped"
    assert view["exit_reason"] == "forced off after the guest ignored a 0.05 s shutdown"


async def test_a_guest_powering_itself_off_is_a_clean_stop(m: Manager, driver: FakeDriver
                                                           ) -> None:
    await m.vms.create(vm("self"), start=True, wait=True)
    with pytest.raises(AgentError):  # the agent goes down with its guest
        await m.guest.exec("self", ["poweroff"])
    view = await settle(m, "self", "stopped")
    assert view["exit_reason"] == "guest powered off"


@pytest.mark.parametrize(("op", "state"), [
    ("pause", "defined"), ("resume", "defined"), ("shutdown", "defined"), ("stop", "defined"),
    ("reboot", "defined"), ("save", "defined"), ("restore", "defined"),
    ("resume", "running"), ("start", "running"), ("restore", "running"),
    ("pause", "paused"), ("reboot", "paused"), ("start", "paused"),
])
async def test_a_refused_transition_names_both_states_and_changes_nothing(
        m: Manager, op: str, state: str) -> None:
    await m.vms.create(vm("w"), start=state != "defined", wait=state != "defined")
    if state == "paused":
        await m.vms.pause("w")
        for _ in range(200):  # a pause does not wait for its store write
            if kinds(m, "w")[-1] == "paused":
                break
            await asyncio.sleep(0.005)
    before = kinds(m, "w")
    with pytest.raises(InvalidState) as err:
        await getattr(m.vms, op)("w")
    assert err.value.vm == "w" and err.value.state == state and err.value.required
    assert state in str(err.value) and str(err.value).startswith(f"cannot {op} VM 'w'")
    if op == "stop":  # a graceful stop too is refused as a stop (not as the shutdown it does)
        with pytest.raises(InvalidState, match=r"^cannot stop VM 'w'"):
            await m.vms.stop("w", force=False)
    assert (await m.vms.get("w"))["state"] == state and kinds(m, "w") == before


async def test_the_guest_through_its_agent(m: Manager, driver: FakeDriver) -> None:
    await m.vms.create(vm("g"), start=True, wait=True)
    res = await m.guest.exec("g", ["echo", "hello"])
    assert res["exitcode"] == 0 and base64.b64decode(res["stdout"]) == b"hello\n"
    res = await m.guest.exec("g", ["cat"], stdin=b"piped")
    assert base64.b64decode(res["stdout"]) == b"piped"
    chunks = [c async for c in m.guest.exec_stream("g", ["sh", "-c", "echo out; echo err >&2;"
                                                                     " exit 4"])]
    out = b"".join(base64.b64decode(c["stdout"]) for c in chunks if "stdout" in c)
    assert out == b"out\n" and chunks[-1]["exitcode"] == 4
    assert not [p for p in driver.machine("g").guest.files if p.startswith("/tmp/.corral")]
    res = await m.guest.write_file("g", "/root/data", b"\x00\x01payload")
    assert res["size"] == 9
    assert await m.guest.read_file("g", "/root/data") == b"\x00\x01payload"
    [eth0] = await m.guest.addresses("g")
    assert eth0["name"] == "eth0" and eth0["mac"] == (await m.vms.get("g"))["nics"][0]["mac"]
    assert eth0["ipv4"] == ["10.0.2.15"]
    await m.vms.pause("g")
    with pytest.raises(InvalidState):
        await m.guest.exec("g", ["true"])


async def test_cold_boots_take_turns_until_their_guests_answer(
        m: Manager, driver: FakeDriver, monkeypatch: pytest.MonkeyPatch) -> None:
    from corral.service.lifecycle import BootGate

    monkeypatch.setenv("CORRAL_BOOT_CONCURRENCY", "1")
    m.vms.life.gate = BootGate()
    driver.boot_delay = 4.0
    first = asyncio.ensure_future(m.vms.create(vm("a"), start=True))
    second = asyncio.ensure_future(m.vms.create(vm("b"), start=True))
    states: dict[str, str] = {}
    for _ in range(800):  # whichever came first boots; the other waits for its guest
        states = {v["name"]: v["state"] for v in m.vms.list()}
        if sorted(states.values()) == ["running", "starting"]:
            break
        await asyncio.sleep(0.005)
    assert sorted(states.values()) == ["running", "starting"], states
    await asyncio.sleep(0.1)
    assert sorted(v["state"] for v in m.vms.list()) == ["running", "starting"]
    assert [mc.name for mc in driver.launched] == [n for n, st in states.items()
                                                   if st == "running"]
    await asyncio.gather(first, second)
    for name in ("a", "b"):
        assert (await settle(m, name, "running", within=5))["name"] == name
    monkeypatch.setenv("CORRAL_BOOT_CONCURRENCY", "0")
    assert BootGate().limit == 0  # no limit
    monkeypatch.delenv("CORRAL_BOOT_CONCURRENCY")  # the default: a boot per CPU under TCG
    cpus = os.cpu_count() or 1
    assert (BootGate("tcg").limit, BootGate("kvm").limit) == (cpus, 2 * cpus)
