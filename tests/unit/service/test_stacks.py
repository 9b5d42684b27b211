"""Stacks on the fake engine, with the networks' host side recorded instead of made: plans
(create, change field by field, remove), idempotence, a restart for new memory, a forward
added live, a failure in the middle and the next apply continuing, removal, refusals with
their lines, and one apply at a time."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import pytest

from corral.engine.fake import FakeDriver
from corral.errors import InvalidSpec, InvalidState, LaunchFailed
from corral.host.network import Made
from corral.service.manager import Manager
from corral.service.netstate import Networks

LAB = """\
name: lab
networks:
  lan:
    subnet: 10.77.0.0/24
routers:
  gw:
    uplink: true
    networks: [lan]
disks:
  data:
    size: 64M
vms:
  db:
    memory: 256M
    nics: [{network: lan, ip: 10.77.0.10}]
    disks: [data]
  web:
    count: 2
    nics: [{network: lan, ip: 10.77.0.20}]
firewall:
  - {target: db, allow: tcp/5432, source: 10.77.0.0/24}
"""


@pytest.fixture(autouse=True)
def fake_host(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    async def call(fn: Callable[..., Any], *args: Any) -> Any:
        calls.append(fn.__name__)
        if fn.__name__ in ("ensure_network", "ensure_router", "attach", "ensure_tap"):
            return Made((), ())
        if fn.__name__ == "taps_counters":
            return [None] * len(args[0])
        return {} if fn.__name__ == "leases" else None

    monkeypatch.setattr(Networks, "call", staticmethod(call))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    return calls


async def apply(m: Manager, text: str, file: str = "lab.yaml") -> list[dict[str, Any]]:
    return [e async for e in await m.stacks.apply(text, file)]


def actions(plan: dict[str, Any]) -> dict[str, str]:
    return {c["id"]: c["action"] for c in plan["changes"]}


async def test_plan_apply_and_a_second_apply_changes_nothing(m: Manager) -> None:
    plan = await m.stacks.plan(LAB, "lab.yaml")
    assert actions(plan) == {
        "network/lan": "create", "disk/data": "create", "router/gw": "create",
        "vm/db": "create", "vm/web-1": "create", "vm/web-2": "create",
        "rule/vm:db:tcp/5432:10.77.0.0/24": "create"}
    assert [c["line"] for c in plan["changes"]][:2] == [3, 10]
    events = await apply(m, LAB)
    assert events[0]["event"] == "plan" and events[-1] == {"event": "end", "ok": True,
                                                          "stack": "lab"}
    assert sum(e["event"] == "done" for e in events) == 7
    assert {v["name"]: v["state"] for v in m.vms.list()} == {
        "db": "running", "web-1": "running", "web-2": "running"}
    assert (await m.vms.get("web-2"))["nics"][0]["ip"] == "10.77.0.21"
    order = [e["id"] for e in events if e["event"] == "done"]
    assert order.index("network/lan") < order.index("vm/db") < order.index(
        "rule/vm:db:tcp/5432:10.77.0.0/24")
    again = await m.stacks.plan(LAB, "lab.yaml")
    assert again["noop"] and set(actions(again).values()) == {"keep"}
    events = await apply(m, LAB)
    assert [e["event"] for e in events] == ["plan", "end"]
    assert m.stacks.get("lab")["status"] == "applied"


async def test_memory_needs_a_restart_a_forward_is_added_live_and_removal(m: Manager) -> None:
    await apply(m, LAB)
    changed = LAB.replace("memory: 256M", "memory: 384M").replace(
        "    networks: [lan]\n", "    networks: [lan]\n    forwards:\n"
        "      - {host_port: 18080, vm: web-1, port: 80}\n").replace("  web:\n    count: 2",
                                                                    "  web:\n    count: 1")
    plan = await m.stacks.plan(changed, "lab.yaml")
    by_id = {c["id"]: c for c in plan["changes"]}
    assert by_id["vm/db"]["action"] == "restart"
    assert by_id["vm/db"]["fields"] == [{"field": "memory", "old": "256M", "new": "384M",
                                         "how": "restart"}]
    assert by_id["forward/gw:tcp:18080"]["action"] == "create"
    assert by_id["vm/web"]["action"] == "create"  # count 1: the plain name
    assert by_id["vm/web-1"]["action"] == "remove" and by_id["vm/web-2"]["action"] == "remove"
    assert plan["changes"][0]["action"] == "remove"  # removals come first
    bad = await m.stacks.plan(changed.replace("vm: web-1", "vm: web"), "lab.yaml")
    events = await apply(m, changed.replace("vm: web-1", "vm: web"))
    assert events[-1]["ok"], events[-1]
    assert (await m.vms.get("db"))["memory_bytes"] == 384 << 20
    assert m.routers.forwards()[0]["vm"] == "web"
    assert bad["summary"]["restart"] == 1
    events = [e async for e in await m.stacks.rm("lab")]
    assert events[-1]["ok"]
    assert m.vms.list() == [] and m.networks.list() == [] and m.routers.list() == []
    assert await m.disks.list() == [] and m.stacks.list() == []
    assert m.networks.rules()["rules"] == []


async def test_a_failure_stops_says_which_and_the_next_apply_continues(
        m: Manager, driver: FakeDriver) -> None:
    driver.fail_next("launch", LaunchFailed(["qemu-system-x86_64"], 1, "qemu: out of luck",
                                            what="QEMU would not start"))
    events = await apply(m, LAB)
    end = events[-1]
    failed = end["failed"]
    assert not end["ok"] and failed in ("vm/db", "vm/web-1", "vm/web-2")
    assert "out of luck" in end["error"]["message"]
    assert end["error"]["message"].startswith(failed)
    shown = m.stacks.get("lab")
    made = {r["id"] for r in shown["resources"] if r["state"] == "made"}
    assert shown["status"] == "failed" and "network/lan" in made and failed not in made
    plan = await m.stacks.plan(LAB, "lab.yaml")
    # the VM defined but not started is finished: started, never made twice
    assert actions(plan)["network/lan"] == "keep" and actions(plan)[failed] == "finish"
    assert (await apply(m, LAB))[-1]["ok"]
    assert {v["name"] for v in m.vms.list()} == {"db", "web-1", "web-2"}
    await _drain(await m.stacks.rm("lab"))


async def test_a_cut_short_resource_is_finished_not_made_twice(m: Manager) -> None:
    await apply(m, LAB)
    doc = m.runtime.db.get_doc("stack:lab")
    doc["resources"]["vm/db"]["state"] = "pending"
    m.runtime.db.put_doc("stack:lab", doc)
    await m.vms.stop("db")
    assert actions(await m.stacks.plan(LAB, "lab.yaml"))["vm/db"] == "finish"
    assert (await apply(m, LAB))[-1]["ok"]
    assert (await m.vms.get("db"))["state"] == "running"
    assert len(m.vms.list()) == 3
    await _drain(await m.stacks.rm("lab"))


async def _drain(events: Any) -> list[dict[str, Any]]:
    return [e async for e in events]


async def test_a_second_apply_of_the_same_stack_is_refused(m: Manager) -> None:
    first = await m.stacks.apply(LAB, "lab.yaml")
    with pytest.raises(InvalidState, match="busy"):
        await m.stacks.apply(LAB, "lab.yaml")
    assert (await _drain(first))[-1]["ok"]
    await _drain(await m.stacks.rm("lab"))


@pytest.mark.parametrize(("text", "message"), [
    ("vms:\n  a:\n    colour: red\n", "lab.yaml:3: vms.a.colour: unknown field"),
    ("vms:\n  a:\n    nics: [{network: nowhere}]\n",
     "lab.yaml:3: vms.a.nics[0].network: no network 'nowhere' in the stack or the daemon"),
    ("networks:\n  n: {subnet: 10.9.0.0/24}\nvms:\n  a:\n    nics:\n"
     "      - {network: n, ip: 10.9.1.5}\n",
     "lab.yaml:6: vms.a.nics[0].ip: 10.9.1.5 is not a host address"),
    ("vms:\n  a: {}\n  a: {cpus: 2}\n", "lab.yaml:3: vms.a: given twice (first on line 2)"),
    ("vms:\n  a-1: {}\n  a: {count: 2}\n", "lab.yaml:3: vms.a: vm 'a-1' is named twice"),
    ("vms:\n  a: {from_snapshot: 'b:s'}\n  b: {from_snapshot: 'a:t'}\nsnapshots:\n"
     "  s: {vm: b}\n  t: {vm: a}\n", "a cycle: "),
    ("vms:\n  a:\n    memory: lots\n", "lab.yaml:3: vms.a.memory:"),
    ("networks:\n  n: {subnet: 10.9.0.0/24}\nvms:\n  a:\n    image: nope\n",
     "lab.yaml:5: vms.a.image: no image 'nope'; see 'corral image list'"),
    ("networks:\n  n: {subnet: 10.9.0.0/24}\nvms:\n  a:\n    memory: 64T\n",
     "lab.yaml:5: vms.a.memory: 64T is more than this host's"),
    ("vms:\n  a:\n    memory: 32M\n", "lab.yaml:3: vms.a.memory: 32M is too small"),
    ("vms:\n  a:\n    hostname: 'a b'\n",
     "lab.yaml:3: vms.a.hostname: 'a b' is not a valid host name"),
    ("vms:\n  a:\n    pin: [999]\n", "lab.yaml:3: vms.a.pin: [999] names CPUs"),
    ("vms: [1, 2\n", "lab.yaml:2: (file): not YAML"),
    ("networks:\n  n: {subnet: 10.9.0.0/30}\n",  # creating it would refuse it
     "lab.yaml:2: networks.n.subnet: 10.9.0.0/30 is too small; use /29 or larger"),
    ("networks:\n  n: {subnet: 127.9.0.0/24}\n",
     "lab.yaml:2: networks.n.subnet: 127.9.0.0/24 is in loopback space"),
    ("networks:\n  n: {subnet: 10.9.0.0/24}\n  o: {subnet: 10.9.0.128/25}\n",
     "lab.yaml:3: networks.o.subnet: 10.9.0.128/25 overlaps network 'n' (10.9.0.0/24)"),
])
async def test_bad_files_are_refused_with_their_line(m: Manager, text: str,
                                                     message: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        await m.stacks.plan(text, "lab.yaml")
    assert message in err.value.message
    assert m.vms.list() == [] and m.stacks.list() == [] and m.networks.list() == []


async def test_a_name_taken_outside_the_stack_is_refused(m: Manager) -> None:
    await m.vms.create({"name": "db", "image": "tiny"})
    with pytest.raises(InvalidSpec, match=r"lab\.yaml:13: vms\.db: vm .db. exists already"):
        await m.stacks.plan(LAB, "lab.yaml")
    await m.vms.rm("db")


async def test_independent_resources_are_made_at_once(m: Manager) -> None:
    text = "vms:\n  w:\n    count: 3\n"
    events = await m.stacks.apply(text, "farm.yaml")
    seen: list[str] = []
    async for e in events:
        seen.append(e["event"])
        await asyncio.sleep(0)
    assert seen[1:4] == ["begin", "begin", "begin"], seen
    await _drain(await m.stacks.rm("farm"))


async def test_host_set_changes_the_scheduler_live_and_records_it(m: Manager) -> None:
    from corral import settings

    try:
        before = m.host.info()["scheduler"]["capacity"]
        res = m.host.set("cpu-ratio", "2")
        assert (res["key"], res["old"], res["value"]) == ("scheduler.cpu_ratio", 1.0, 2.0)
        after = m.host.info()["scheduler"]["capacity"]
        assert after != before
        assert m.host.set("queue-policy", "sjf")["value"] == "sjf"
        assert m.host.info()["scheduler"]["policy"] == "sjf"
        with pytest.raises(InvalidSpec, match="cannot change while the daemon runs"):
            m.host.set("home", "/x")
        with pytest.raises(InvalidSpec):
            m.host.set("cpu-ratio", "0")  # the scheduler refuses it: the change is undone
        assert settings.value("scheduler.cpu_ratio") == 2.0
        changes = [e for e in m.vms.events(0, "host") if e["kind"] == "setting_changed"]
        assert [(e["detail"]["key"], e["detail"]["new"]) for e in changes] == [
            ("scheduler.cpu_ratio", 2.0), ("scheduler.queue_policy", "sjf")]
        shown = {s["key"]: s for s in m.host.config()["settings"]}
        assert shown["scheduler.cpu_ratio"]["source"] == "corral host set"
    finally:
        settings.reset()


async def test_a_vm_found_stopped_is_started_again(m: Manager) -> None:
    await apply(m, LAB)
    await m.vms.stop("web-2")
    plan = await m.stacks.plan(LAB, "lab.yaml")
    change = next(c for c in plan["changes"] if c["id"] == "vm/web-2")
    assert change["action"] == "update" and change["fields"] == [
        {"field": "state", "old": "stopped", "new": "running", "how": "live"}]
    assert (await apply(m, LAB))[-1]["ok"]
    assert (await m.vms.get("web-2"))["state"] == "running"
    assert (await m.stacks.plan(LAB, "lab.yaml"))["noop"]
    await _drain(await m.stacks.rm("lab"))


async def test_nested_aliases_cost_nothing(m: Manager) -> None:
    import time

    levels = "".join(f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 9)}]\n" for i in range(1, 12))
    text = "x0: &x0 [a]\n" + levels + "vms:\n  a: {provision: *x11}\n"
    t0 = time.monotonic()
    with pytest.raises(InvalidSpec, match=r"^bomb\.yaml:\d+: "):
        await m.stacks.plan(text, "bomb.yaml")
    assert time.monotonic() - t0 < 5


async def test_a_warm_start_takes_its_hardware_from_the_snapshot(m: Manager) -> None:
    text = "vms:\n  a: {}\n  b:\n    from_snapshot: 'a:s'\n    memory: 1G\nsnapshots:\n" \
           "  s: {vm: a}\n"
    with pytest.raises(InvalidSpec, match=r"lab\.yaml:5: vms\.b\.memory: a warm start"):
        await m.stacks.plan(text, "lab.yaml")


async def test_new_hardware_the_host_cannot_give_is_refused_at_plan_time(m: Manager) -> None:
    assert (await apply(m, LAB))[-1]["ok"]
    with pytest.raises(InvalidSpec, match=r"^lab\.yaml:14: vms\.db\.memory: 64T is more than"):
        await m.stacks.plan(LAB.replace("memory: 256M", "memory: 64T"), "lab.yaml")
    assert (await m.vms.get("db"))["memory_bytes"] == 256 << 20
    await _drain(await m.stacks.rm("lab"))


async def test_a_subnet_overlapping_a_network_of_the_daemon_is_refused(m: Manager) -> None:
    await m.networks.create("outside", "10.9.0.0/24")
    with pytest.raises(InvalidSpec) as err:
        await m.stacks.plan("networks:\n  n: {subnet: 10.9.0.0/25}\n", "lab.yaml")
    assert err.value.message == ("lab.yaml:2: networks.n.subnet: 10.9.0.0/25 overlaps "
                                 "network 'outside' (10.9.0.0/24)")
    await m.networks.rm("outside")
