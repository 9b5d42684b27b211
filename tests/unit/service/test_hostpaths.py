"""Files from clients on the fake engine: files used in place are checked again each time a
machine starts (one swapped for a link, or a directory no longer allowed, stops the start
and leaves the VM as it was); an upload is copied into a guest piece by piece."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from corral.engine.fake import FakeDriver
from corral.errors import PathNotAllowed
from corral.service.manager import Manager

from .conftest import vm


async def test_a_disk_swapped_for_a_link_is_not_started(
        m: Manager, driver: FakeDriver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    disk = allowed / "data.raw"
    disk.write_bytes(bytes(1 << 16))
    secret = tmp_path / "secret"
    secret.write_bytes(b"root only")
    monkeypatch.setenv("CORRAL_ALLOWED_PATHS", str(allowed))
    await m.vms.create(vm("d", disks=[{"path": str(disk), "format": "raw"}]))
    await m.vms.start("d", wait=True, timeout=5)
    await m.vms.stop("d")

    disk.unlink()
    disk.symlink_to(secret)  # a user who can write the directory swaps the file
    with pytest.raises(PathNotAllowed, match="outside the allowed directories"):
        await m.vms.start("d")
    view = await m.vms.get("d")
    assert view["state"] == "stopped" and view["pid"] is None
    assert len(driver.launched) == 1  # no machine was launched for the refused start

    disk.unlink()
    disk.write_bytes(bytes(1 << 16))
    monkeypatch.setenv("CORRAL_ALLOWED_PATHS", str(tmp_path / "elsewhere"))
    with pytest.raises(PathNotAllowed, match=r"paths\.allowed"):
        await m.vms.start("d")
    monkeypatch.setenv("CORRAL_ALLOWED_PATHS", str(allowed))
    assert (await m.vms.start("d", wait=True, timeout=5))["state"] == "running"
    await m.vms.rm("d")
    assert disk.is_file()  # a file used in place is the user's: it stays


async def test_a_file_copied_into_a_guest_from_an_upload(m: Manager, home: Path) -> None:
    await m.vms.create(vm("g"), start=True, wait=True, timeout=5)
    data = bytes(range(256)) * 20000  # several agent-sized pieces

    async def body() -> AsyncIterator[bytes]:
        for off in range(0, len(data), 65536):
            yield data[off:off + 65536]

    up = await m.uploads.receive(body())
    out = await m.guest.write_file("g", "/root/blob", m.uploads.path(up["upload"]))
    assert out["size"] == len(data) and out["sha256"] == up["sha256"]
    assert await m.guest.read_file("g", "/root/blob") == data
    await m.vms.rm("g")
