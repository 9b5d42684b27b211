"""The QEMU machine's unplug of a device the guest let go of late: after a request that
timed out (the guest was slow, or paused), QEMU removes the device when the guest lets go,
and the record still says attached. A second detach must finish the job, not fail for ever
on 'Device not found' (it left the disk attached to nothing and unattachable)."""

from __future__ import annotations

from typing import Any

import pytest

from corral.engine.qemu.driver import QemuMachine
from corral.engine.qemu.process import Process
from corral.errors import MonitorError


class Monitor:
    """Answers device_del as QEMU does for a device it no longer has (or ``error``)."""

    def __init__(self, error: str = "DeviceNotFound") -> None:
        self.error = error
        self.calls: list[tuple[str, Any]] = []

    async def execute(self, command: str, arguments: Any = None, timeout: float = 30.0) -> Any:
        self.calls.append((command, arguments))
        if command == "device_del":
            raise MonitorError(command, self.error, f"Device '{arguments['id']}' not found")
        return {}


async def test_a_device_qemu_no_longer_has_is_detached() -> None:
    monitor = Monitor()
    machine = QemuMachine("x", Process(1, 0), monitor, None)  # type: ignore[arg-type]
    await machine.remove_disk("disk0", 5.0)
    assert monitor.calls == [("device_del", {"id": "vd-disk0"}),
                             ("blockdev-del", {"node-name": "disk0"})]


async def test_any_other_refusal_is_raised() -> None:
    monitor = Monitor("GenericError")
    machine = QemuMachine("x", Process(1, 0), monitor, None)  # type: ignore[arg-type]
    with pytest.raises(MonitorError, match="GenericError"):
        await machine.remove_disk("disk0", 5.0)
    assert [c for c, _ in monitor.calls] == ["device_del"]
