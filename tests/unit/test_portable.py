"""Export as a stream and import without QEMU: the pause around the copy, what it refuses,
what it puts back, the archive's exact size and bytes, and imports that would make the
daemon open a file outside the VM. (The pause itself, QEMU flushing its disks, is exercised
with real guests elsewhere.)"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from corral.config import Paths
from corral.domain.states import State
from corral.errors import InvalidSpec, InvalidState, NotFound, QuotaExceeded
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


async def upload(m: Manager, data: bytes) -> str:
    async def chunks() -> AsyncIterator[bytes]:
        yield data

    out: dict[str, str] = await m.uploads.receive(chunks())
    return out["upload"]


async def export_bytes(m: Manager, name: str, live: bool = False
                       ) -> tuple[dict[str, object], bytes]:
    async with m.vms.export(name, live=live) as plan:
        data = b"".join([chunk async for chunk in plan.chunks()])
    assert len(data) == plan.size  # the Content-Length sent is exact
    return plan.info(), data


@pytest.fixture
async def manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                  ) -> AsyncIterator[tuple[Manager, Paused]]:
    m = Manager(Paths(tmp_path / "home"))
    await m.open()
    kernel = await upload(m, b"\x7fELF")
    await m.vms.create({"name": "web", "kernel": f"upload:{kernel}", "disks": [{"size": "1M"}]})
    fake = Paused(m)
    monkeypatch.setattr(m.vms.life, "pause", fake.pause)
    monkeypatch.setattr(m.vms.life, "resume", fake.resume)
    yield m, fake
    await m.close()


async def test_a_running_vm_is_paused_for_the_copy_and_resumed(
        manager: tuple[Manager, Paused]) -> None:
    m, fake = manager
    m.runtime.get("web").state = State.RUNNING
    with pytest.raises(InvalidState, match="needs defined, stopped, saved, crashed"):
        await export_bytes(m, "web")
    info, data = await export_bytes(m, "web", live=True)
    assert fake.calls == ["pause", "resume"] and m.runtime.get("web").state == State.RUNNING
    assert info["saved"] is False and info["files"] == ["disk0.qcow2", "kernel",
                                                        "vmstate.qcow2"]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames()[0] == portable.MANIFEST
        first = tar.extractfile(portable.MANIFEST)
        assert first is not None and json.load(first)["name"] == "web"
        kernel = tar.extractfile("kernel")
        assert kernel is not None and kernel.read() == b"\x7fELF"


async def test_a_paused_vm_stays_paused_and_exports_are_byte_identical(
        manager: tuple[Manager, Paused]) -> None:
    m, fake = manager
    m.runtime.get("web").state = State.PAUSED
    _, paused = await export_bytes(m, "web", live=True)
    assert fake.calls == [] and m.runtime.get("web").state == State.PAUSED
    m.runtime.get("web").state = State.STOPPED
    _, stopped = await export_bytes(m, "web")
    assert stopped == paused  # nothing changed: the same bytes


async def test_a_failed_live_export_still_resumes(manager: tuple[Manager, Paused]) -> None:
    m, fake = manager
    m.runtime.get("web").state = State.RUNNING
    with pytest.raises(ConnectionResetError):
        async with m.vms.export("web", live=True) as plan:
            async for _chunk in plan.chunks():
                raise ConnectionResetError("the client went away")
    assert fake.calls == ["pause", "resume"] and m.runtime.get("web").state == State.RUNNING
    assert not m.runtime.busy("web")

    async def resumed_by_another_request(name: str) -> None:
        fake.calls.append("pause")  # and someone resumes it before the copy begins
    m.vms.life.pause = resumed_by_another_request  # type: ignore[method-assign,assignment]
    fake.calls.clear()
    with pytest.raises(InvalidState, match="running"):
        await export_bytes(m, "web", live=True)
    assert fake.calls == ["pause", "resume"] and not m.runtime.busy("web")


async def test_an_uploaded_export_imports_and_is_used_up(manager: tuple[Manager, Paused]
                                                         ) -> None:
    m, _ = manager
    _, data = await export_bytes(m, "web")
    up = await upload(m, data)
    vm = await m.vms.import_(upload=up, name="web2")
    assert vm["state"] == "stopped"
    assert m.runtime.get("web2").spec.kernel == str(m.runtime.paths.vm_dir("web2") / "kernel")
    assert not (m.uploads.dir / up).exists()
    with pytest.raises(NotFound, match="upload the file again"):
        await m.vms.import_(upload=up, name="web3")


def _tamper(data: bytes, home: Path, change: Callable[[dict[str, Any], Path], None]) -> bytes:
    """``data`` (an export) with its manifest and files changed by ``change(manifest,
    dir)``, checksums made right again."""
    work = home.parent / "tamper"
    work.mkdir()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(work, filter="data")
    manifest = json.loads((work / portable.MANIFEST).read_text())
    change(manifest, work)
    manifest["files"] = {n: hashlib.sha256((work / n).read_bytes()).hexdigest()
                         for n in manifest["files"]}
    (work / portable.MANIFEST).write_text(json.dumps(manifest))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        tar.add(work / portable.MANIFEST, portable.MANIFEST)
        for n in manifest["files"]:
            tar.add(work / n, n)
    shutil.rmtree(work)
    return out.getvalue()


async def test_an_export_cannot_make_the_daemon_open_a_host_file(
        manager: tuple[Manager, Paused], tmp_path: Path) -> None:
    m, _ = manager
    _, data = await export_bytes(m, "web")
    secret = tmp_path / "secret"
    secret.write_bytes(b"root only")

    def backed(manifest: dict[str, Any], work: Path) -> None:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                        str(secret), str(work / "disk0.qcow2")], check=True)

    def data_file(manifest: dict[str, Any], work: Path) -> None:
        (work / "disk0.qcow2").unlink()
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                        f"data_file={tmp_path / 'data.raw'}", str(work / "disk0.qcow2"),
                        "9"], check=True)

    for change in (backed, data_file):
        up = await upload(m, _tamper(data, tmp_path, change))
        with pytest.raises(InvalidSpec, match="names a file outside the VM"):
            await m.vms.import_(upload=up, name="evil")
        assert m.runtime.db.get_vm("evil") is None
        assert sorted(p.name for p in (tmp_path / "home" / "vms").iterdir()) == ["web"]
    assert secret.read_bytes() == b"root only"

    def warm(manifest: dict[str, Any], work: Path) -> None:
        manifest["spec"]["warm_template"] = str(tmp_path)
        manifest["spec"]["initrd"] = str(secret)
        manifest["spec"]["kernel"] = None
        manifest["spec"]["image"] = None
        manifest["files"].pop("kernel")
        (work / "kernel").unlink()

    vm = await m.vms.import_(upload=await upload(m, _tamper(data, tmp_path, warm)),
                             name="tame")
    spec = m.runtime.get("tame").spec
    assert spec.warm_template is None and spec.initrd is None and vm["state"] == "stopped"


class MoveView:
    """The parts of a cluster member a cold move's receiving end uses; records each hand
    over of the VM's cluster-wide name."""

    def __init__(self, m: Manager) -> None:
        self.rt, self.vms, self.name, self.cs = m.runtime, m.vms, "h2", self
        self.handed: list[tuple[str, str, str]] = []

    def hand_over(self, name: str, source: str, target: str) -> None:
        self.handed.append((name, source, target))


async def test_a_cold_move_is_imported_like_a_clients_export(
        manager: tuple[Manager, Paused], tmp_path: Path) -> None:
    """The sender writes the streamed export; the receiver refuses one naming a host file
    (and gives the name back) and drops the sender's warm template."""
    from corral.service import clustermove

    m, _ = manager
    view = MoveView(m)
    sent = m.runtime.paths.home / "sent.corral"
    await clustermove._write_export(view, "web", sent)  # type: ignore[arg-type]
    assert sent.read_bytes() == (await export_bytes(m, "web"))[1]
    secret = tmp_path / "secret"
    secret.write_bytes(b"root only")

    def backed(manifest: dict[str, Any], work: Path) -> None:
        manifest["spec"]["warm_template"] = str(tmp_path)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                        str(secret), str(work / "disk0.qcow2")], check=True)

    evil = m.runtime.paths.home / "evil.corral"
    evil.write_bytes(_tamper(sent.read_bytes(), tmp_path, backed))
    with pytest.raises(InvalidSpec, match="names a file outside the VM"):
        await clustermove.receive(view, "evil", "h1", evil)  # type: ignore[arg-type]
    assert view.handed == [("evil", "h1", "h2"), ("evil", "h2", "h1")]
    assert m.runtime.db.get_vm("evil") is None
    warm = m.runtime.paths.home / "warm.corral"
    warm.write_bytes(_tamper(sent.read_bytes(), tmp_path, lambda manifest, _work: manifest[
        "spec"].update(warm_template=str(tmp_path))))
    vm = await clustermove.receive(view, "moved", "h1", warm)  # type: ignore[arg-type]
    assert vm["host"] == "h2" and vm["state"] == "stopped"
    assert m.runtime.get("moved").spec.warm_template is None


async def test_an_import_over_the_disk_quota_is_refused_and_leaves_nothing(
        manager: tuple[Manager, Paused]) -> None:
    m, _ = manager
    _, data = await export_bytes(m, "web")
    await m.projects.set_quotas("default", {"max_disk": "1M"})  # web's 1M disk fills it
    with pytest.raises(QuotaExceeded, match="max_disk"):
        await m.vms.import_(upload=await upload(m, data), name="web2")
    assert [v["name"] for v in m.vms.list()] == ["web"]
    assert not m.runtime.paths.vm_dir("web2").exists()
