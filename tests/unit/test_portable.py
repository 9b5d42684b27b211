"""Live export without QEMU: the pause around the copy, what it refuses, what it puts back.
(The pause itself, QEMU flushing its disks, is exercised with real guests elsewhere.)"""

from __future__ import annotations

import json
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from corral.config import Paths
from corral.domain.states import State
from corral.errors import InvalidSpec, InvalidState
from corral.service import portable
from corral.service.manager import Manager


class Paused:
    """Stands in for the runtime's pause and resume: flips the state, records the calls."""

    def __init__(self, m: Manager) -> None:
        self.m = m
        self.calls: list[str] = []

    async def pause(self, name: str) -> None:
        self.calls.append("pause")
        self.m.runtime.get(name).state = State.PAUSED

    async def resume(self, name: str) -> None:
        self.calls.append("resume")
        rec = self.m.runtime.get(name)
        if rec.state != State.PAUSED:
            raise InvalidState(name, "resume", rec.state.value, ["paused"])
        rec.state = State.RUNNING


@pytest.fixture
async def manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                  ) -> AsyncIterator[tuple[Manager, Paused]]:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\x7fELF")
    m = Manager(Paths(tmp_path / "home"))
    await m.open()
    await m.vms.create({"name": "web", "kernel": str(kernel), "disks": [{"size": "1M"}]})
    fake = Paused(m)
    monkeypatch.setattr(m.vms.life, "pause", fake.pause)
    monkeypatch.setattr(m.vms.life, "resume", fake.resume)
    yield m, fake
    await m.close()


async def test_a_running_vm_is_paused_for_the_copy_and_resumed(
        manager: tuple[Manager, Paused], tmp_path: Path) -> None:
    m, fake = manager
    m.runtime.get("web").state = State.RUNNING
    with pytest.raises(InvalidState, match="needs defined, stopped, saved, crashed"):
        await m.vms.export("web", str(tmp_path / "no.corral"))
    out = await m.vms.export("web", str(tmp_path / "web.corral"), live=True)
    assert fake.calls == ["pause", "resume"] and m.runtime.get("web").state == State.RUNNING
    assert out["saved"] is False and "disk0.qcow2" in out["files"]
    with tarfile.open(tmp_path / "web.corral") as tar:
        first = tar.extractfile(portable.MANIFEST)
        assert first is not None and json.load(first)["name"] == "web"


async def test_a_paused_vm_stays_paused_and_a_stopped_one_is_exported_as_ever(
        manager: tuple[Manager, Paused], tmp_path: Path) -> None:
    m, fake = manager
    m.runtime.get("web").state = State.PAUSED
    await m.vms.export("web", str(tmp_path / "a.corral"), live=True)
    assert fake.calls == [] and m.runtime.get("web").state == State.PAUSED
    m.runtime.get("web").state = State.STOPPED
    await m.vms.export("web", str(tmp_path / "b.corral"), live=True)
    assert sorted(p.name for p in tmp_path.glob("*.corral")) == ["a.corral", "b.corral"]


async def test_a_failed_live_export_still_resumes_and_leaves_no_file(
        manager: tuple[Manager, Paused], tmp_path: Path) -> None:
    m, fake = manager
    m.runtime.get("web").state = State.RUNNING
    with pytest.raises(InvalidSpec, match="no directory"):
        await m.vms.export("web", str(tmp_path / "nope" / "web.corral"), live=True)
    assert fake.calls == ["pause", "resume"] and m.runtime.get("web").state == State.RUNNING

    async def resumed_by_another_request(name: str) -> None:
        fake.calls.append("pause")  # and someone resumes it before the copy begins
    m.vms.life.pause = resumed_by_another_request  # type: ignore[method-assign,assignment]
    fake.calls.clear()
    with pytest.raises(InvalidState, match="running"):
        await m.vms.export("web", str(tmp_path / "web.corral"), live=True)
    assert fake.calls == ["pause", "resume"] and list(tmp_path.glob("*.corral")) == []
