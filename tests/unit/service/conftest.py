"""Fixtures for the fast service suite: a Manager on a temporary home, driving fake machines
(:mod:`corral.engine.fake`) instead of QEMU, with a fake image to define VMs from."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.config import Paths
from corral.engine.fake import FakeDriver
from corral.service.manager import Manager


@pytest.fixture(autouse=True)
def _no_machines_left(tmp_path: Path) -> Iterator[None]:
    """Fake machines outlive their Manager as real ones do: forget them, and remove the run
    files they left in the home's directory outside it (``/run/corral-<tag>`` when the
    temporary home is too deep for socket paths)."""
    FakeDriver.forget_all()
    yield
    FakeDriver.forget_all()
    outside = Paths(tmp_path / "home").outside
    shutil.rmtree(outside, ignore_errors=True)
    assert not outside.exists()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Corral home with the image ``tiny`` (a RAM-root image with an agent: a kernel file
    and ``image.json``, as :mod:`corral.images.catalog` reads it); the host pretends to have
    4 CPUs and 4 GiB without overcommit, so capacity is predictable."""
    images = tmp_path / "images"
    tiny = images / "tiny"
    tiny.mkdir(parents=True)
    (tiny / "vmlinux").write_bytes(b"\x7fELF fake kernel")
    (tiny / "image.json").write_text(json.dumps(
        {"name": "tiny", "kernel": "vmlinux", "cmdline": "console=ttyS0", "agent": True}))
    monkeypatch.setenv("CORRAL_IMAGE_PATH", str(images))
    monkeypatch.setenv("CORRAL_HOST_CPUS", "4")
    monkeypatch.setenv("CORRAL_HOST_MEMORY", "4G")
    monkeypatch.setenv("CORRAL_CPU_RATIO", "1")
    monkeypatch.setenv("CORRAL_MEMORY_RATIO", "1")
    return tmp_path / "home"


@pytest.fixture
def driver() -> FakeDriver:
    return FakeDriver()


@pytest.fixture
async def m(home: Path, driver: FakeDriver) -> AsyncIterator[Manager]:
    manager = Manager(Paths(home), driver=driver)
    await manager.open()
    yield manager
    await asyncio.sleep(0.01)  # let exits in flight land: see test_failures' close race
    await manager.close()
    for machine in driver.launched:
        assert not machine.handler_errors, machine.handler_errors


def vm(name: str, **extra: Any) -> dict[str, Any]:
    """A create body for a small VM of the fake image."""
    return {"name": name, "image": "tiny", "memory": "256M", "cpus": 1, **extra}
