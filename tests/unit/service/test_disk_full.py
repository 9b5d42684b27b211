"""A full disk (issue 16 item 9): the store refuses with DiskFull, and neither the record in
memory nor the VM's state moves ahead of the failed write. The home is a tiny tmpfs (root)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.config import Paths
from corral.engine.fake import FakeDriver
from corral.errors import DiskFull
from corral.service.manager import Manager

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs (root)")


@pytest.fixture
def small_home(home: Path) -> Iterator[Path]:
    home.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "corral-test", str(home)],
                   check=True)
    try:
        yield home
    finally:
        subprocess.run(["umount", "-l", str(home)], check=True)


def _fill(home: Path) -> None:
    with (home / "filler").open("wb") as f:
        try:
            while True:
                f.write(b"\0" * (64 << 10))
                f.flush()
        except OSError:
            pass


async def test_a_full_disk_refuses_create_and_save_and_keeps_the_record_as_it_was(
        small_home: Path, driver: FakeDriver) -> None:
    m = Manager(Paths(small_home), driver=driver)
    await m.open()
    try:
        await m.vms.create({"name": "web", "memory": "64M"}, start=True, wait=True)
        await m.vms.pause("web")
        _fill(small_home)
        with pytest.raises(DiskFull, match="is full"):
            await m.vms.create({"name": "db", "memory": "64M"})
        with pytest.raises(DiskFull):
            await m.vms.save("web")
        assert (await m.vms.get("web"))["state"] == "paused", "memory never ahead of disk"
        assert m.runtime.db.get_vm("db") is None
        (small_home / "filler").unlink()
        await m.vms.resume("web")
        assert (await m.vms.get("web"))["state"] == "running"
    finally:
        (small_home / "filler").unlink(missing_ok=True)
        await m.close()
