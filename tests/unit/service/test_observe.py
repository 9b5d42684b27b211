"""The live event stream, the figures cache and the metrics, on fake machines."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from corral.engine.fake import FakeDriver
from corral.service.events import Dropped, Subscription
from corral.service.manager import Manager

from .conftest import vm


async def take(sub: Subscription, since: int | None, n: int, within: float = 5.0
               ) -> list[dict[str, Any]]:
    """The first ``n`` events the subscription gives (heartbeats skipped)."""
    got: list[dict[str, Any]] = []

    async def collect() -> None:
        async for ev in sub.events(since, idle=0.05):
            if ev is not None:
                got.append(ev)
                if len(got) == n:
                    return

    await asyncio.wait_for(collect(), within)
    return got


def samples(m: Manager) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = m.metrics.exposition().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


async def test_a_subscriber_gets_every_event_live_in_order(m: Manager) -> None:
    sub = m.events.subscribe()
    t0 = time.monotonic()
    await m.vms.create(vm("e1"), start=True, wait=True, timeout=5)
    await m.vms.pause("e1")
    got = await take(sub, None, 6)
    assert [e["kind"] for e in got][:4] == ["created", "requested", "starting", "started"]
    assert "paused" in [e["kind"] for e in got]
    ids = [e["id"] for e in got]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert got == m.vms.events()[:len(got)]  # the stream says what the log keeps
    assert time.monotonic() - t0 < 5
    m.events.unsubscribe(sub)


async def test_a_resumed_subscriber_gets_the_log_then_live_events_without_gaps(
        m: Manager) -> None:
    await m.vms.create(vm("r1"))
    await m.vms.create(vm("r2"))
    log = m.vms.events()
    first = log[0]["id"]
    sub = m.events.subscribe()
    await m.vms.create(vm("r3"))  # committed after the subscription: live
    got = await take(sub, first, len(log) - 1 + 1)
    assert [e["id"] for e in got] == [e["id"] for e in m.vms.events(first)]
    assert [e["vm"] for e in got] == ["r2", "r3"]
    m.events.unsubscribe(sub)


async def test_the_vm_filter_and_a_slow_subscriber_is_dropped_with_a_note(
        m: Manager) -> None:
    only = m.events.subscribe(vm="d2")
    slow = m.events.subscribe(size=2)
    for name in ("d1", "d2", "d3", "d4"):
        await m.vms.create(vm(name))
    await asyncio.sleep(0.05)  # the fan-out runs on the loop
    assert slow.dropped and slow not in m.events.subscribers
    assert m.events.dropped_total == 1
    with pytest.raises(Dropped, match="fell more than 2 events behind"):
        await take(slow, None, 10)
    assert [e["vm"] for e in await take(only, None, 1)] == ["d2"]
    m.events.unsubscribe(only)


async def test_closing_the_service_ends_every_stream(home: Any, driver: FakeDriver) -> None:
    from corral.config import Paths

    manager = Manager(Paths(home), driver=driver)
    await manager.open()
    sub = manager.events.subscribe()
    await manager.close()
    with pytest.raises(Dropped, match="daemon is stopping"):
        await take(sub, None, 1)


async def test_metrics_read_cached_figures_and_agree_with_show(
        m: Manager, driver: FakeDriver) -> None:
    await m.vms.create(vm("m1", cpus=2, memory="512M", disks=[{"size": "1G"}]), start=True,
                       wait=True, timeout=5)
    await m.vms.create(vm("m2"))
    await m.telemetry.gather()
    s = samples(m)
    assert s[("corral_vm_memory_size_bytes", (("vm", "m1"),))] == 512 << 20
    assert s[("corral_vm_vcpus", (("vm", "m1"),))] == 2
    assert s[("corral_vm_state", (("state", "running"), ("vm", "m1")))] == 1
    assert s[("corral_vm_state", (("state", "defined"), ("vm", "m2")))] == 1
    assert s[("corral_vm_block_written_bytes_total", (("disk", "disk0"), ("vm", "m1")))] == 0
    assert s[("corral_host_cpus_allocated", ())] == 2
    assert s[("corral_queue_length", ())] == 0
    assert s[("corral_vm_boot_duration_seconds_count", ())] == 1
    assert s[("corral_daemon_resident_memory_bytes", ())] > 1 << 20
    # a monitor that hangs delays neither a scrape nor the next gathering for long
    driver.machine("m1").hang("monitor")
    t0 = time.monotonic()
    samples(m)
    assert time.monotonic() - t0 < 0.5
    await m.telemetry.gather()
    assert time.monotonic() - t0 < 3
    driver.machine("m1").unhang("monitor")
    stats = m.telemetry.vm_stats("m1")
    assert stats["state"] == "running" and len(stats["points"]) == 2


async def test_queue_waits_and_warm_starts_are_timed_from_the_events(m: Manager) -> None:
    await m.vms.create(vm("big", cpus=4), start=True, wait=True, timeout=5)
    await m.vms.create(vm("next"), start=True)  # the host is full: it waits
    assert (await asyncio.to_thread(m.vms.view, "next"))["state"] == "queued"
    await m.vms.rm("big")
    await m.vms.wait_ready("next", 5)
    await m.snapshots.create("next", "s1", memory=True)
    await m.vms.create({"name": "warm", "from_snapshot": "next:s1"}, start=True, wait=True,
                       timeout=5)
    await asyncio.sleep(0.05)
    s = samples(m)
    assert s[("corral_queue_wait_seconds_count", ())] == 1
    assert s[("corral_vm_warm_start_duration_seconds_count", ())] == 1
    assert s[("corral_vm_boot_duration_seconds_count", ())] == 2


async def test_a_subscriber_arriving_while_the_daemon_stops_is_ended_at_once(
        m: Manager) -> None:
    m.events.close()
    late = m.events.subscribe()
    with pytest.raises(Dropped, match="daemon is stopping"):
        await take(late, 0, 1)
