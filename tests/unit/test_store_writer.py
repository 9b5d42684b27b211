"""The store's writer: writes nobody waits for are held for a moment (HOLD) and go
together in one transaction, and every write still runs in the order it was asked for."""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from corral.domain.specs import VMSpec
from corral.domain.states import State
from corral.store import writer as writer_module
from corral.store.db import Store, VMRecord
from corral.store.writer import Writer


def recording() -> tuple[Writer, list[Any]]:
    ran: list[Any] = []

    def batch(writes: list[Any]) -> None:
        ran.append([w(None) for w in writes])

    return Writer(batch), ran


async def test_held_writes_go_together_after_the_hold_and_before_later_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module, "HOLD", 0.01)
    writer, ran = recording()
    writer.later(lambda _conn: "a")
    writer.later(lambda _conn: "b")
    for _ in range(500):  # the hold ends: both go, in one batch
        if ran:
            break
        await asyncio.sleep(0.01)
    writer.later(lambda _conn: "c")
    done = writer.submit(lambda: ran.append("d"))  # asked for after c: runs after it
    await asyncio.wrap_future(done)
    writer.shutdown()
    assert ran == [["a", "b"], ["c"], "d"]


async def test_held_writes_wait_for_the_hold_unless_a_write_is_waited_for(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module, "HOLD", 3600.0)
    writer, ran = recording()
    writer.later(lambda _conn: "a")
    writer.later(lambda _conn: "b")
    await asyncio.sleep(0.05)  # turns of the loop pass: still held
    assert ran == []
    done = writer.submit(lambda: ran.append("c"))  # sends the held ones first, in order
    await asyncio.wrap_future(done)
    writer.shutdown()
    assert ran == [["a", "b"], "c"]


async def test_writes_held_through_a_block_go_in_one_batch_at_its_end() -> None:
    writer, ran = recording()
    with writer.holding():
        writer.later(lambda _conn: "a")
        await asyncio.sleep(0.01)  # turns of the loop pass: still held
        writer.later(lambda _conn: "b")
        await asyncio.sleep(0.01)
        assert ran == []
    writer.submit(lambda: None).result()
    assert ran == [["a", "b"]]
    with writer.holding():  # a write one waits for sends the held ones first, in order
        writer.later(lambda _conn: "c")
        done = writer.submit(lambda: ran.append("d"))
        await asyncio.wrap_future(done)
    writer.shutdown()
    assert ran == [["a", "b"], ["c"], "d"]


def test_off_the_loop_a_held_write_goes_at_once() -> None:
    writer, ran = recording()
    writer.later(lambda _conn: "a")
    writer.submit(lambda: None).result()
    assert ran == [["a"]]
    writer.shutdown()


async def test_shutdown_runs_what_is_held_and_then_refuses_writes() -> None:
    writer, ran = recording()
    writer.later(lambda _conn: "a")
    writer.shutdown()
    assert ran == [["a"]]
    with pytest.raises(RuntimeError):
        writer.submit(lambda: None)
    with pytest.raises(RuntimeError):
        writer.later(lambda _conn: "b")
    writer.shutdown()  # again: nothing happens


def spec() -> VMSpec:
    return VMSpec.model_validate(dict(
        name="web", image="tiny", cpus=1, memory_bytes=256 << 20, kernel="/img/vmlinux",
        initrd=None, cmdline="console=ttyS0", machine="q35", cpu_model="max", disks=[],
        nics=[]))


async def test_a_state_change_and_an_audit_record_commit_together_in_order(
        tmp_path: Path) -> None:
    store = Store(tmp_path / "corral.db")
    rec = VMRecord(name="web", uid=str(uuid.uuid4()), spec=spec(), state=State.RUNNING)
    store.add_vm(rec)
    told: list[tuple[str, str]] = []
    commits: list[int] = []
    store.listeners.append(lambda ev: told.append((ev["kind"], threading.current_thread().name)))
    batch = store._batch

    def counted(writes: list[Any]) -> None:
        commits.append(len(writes))
        batch(writes)

    store._writer._batch = counted  # type: ignore[method-assign]
    rec.state = State.PAUSED
    store.update_vm(rec, "paused", {}, wait=False)
    store.add_event("web", "audit", {"who": "local"})
    assert store.get_vm("web") is rec  # the record is cached at once
    await asyncio.sleep(0)
    await asyncio.to_thread(store.flush)
    assert commits == [2]
    assert [kind for kind, _ in told] == ["paused", "audit"]
    assert [ev["kind"] for ev in store.events(vm="web")][-2:] == ["paused", "audit"]
    store.close()
    again = Store(tmp_path / "corral.db")
    after = again.get_vm("web")
    assert after is not None and after.state is State.PAUSED and after.spec == rec.spec
    again.close()


def test_writes_without_a_loop_are_in_order(tmp_path: Path) -> None:
    store = Store(tmp_path / "corral.db")
    rec = VMRecord(name="web", uid=str(uuid.uuid4()), spec=spec(), state=State.RUNNING)
    store.add_vm(rec)
    for state in (State.PAUSED, State.RUNNING, State.PAUSED):
        rec.state = state
        store.update_vm(rec, state.value, {}, wait=False)
    store.flush()
    assert [ev["kind"] for ev in store.events(vm="web")] == [
        "created", "paused", "running", "paused"]
    store.close()
    again = Store(tmp_path / "corral.db")
    after = again.get_vm("web")
    assert after is not None and after.state is State.PAUSED
    again.close()
