"""Facts about the host: CPUs, memory, accelerator and QEMU version."""

from __future__ import annotations

import functools
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from corral.domain.specs import HostFacts
from corral.engine.accel import Accel


def memory_bytes(meminfo: Path = Path("/proc/meminfo")) -> tuple[int, int]:
    """(total, available) memory in bytes."""
    values: dict[str, int] = {}
    for line in meminfo.read_text().splitlines():
        key, _, rest = line.partition(":")
        values[key] = int(rest.split()[0]) * 1024
    return values["MemTotal"], values.get("MemAvailable", values["MemFree"])


def facts() -> HostFacts:
    return HostFacts(cpus=os.cpu_count() or 1, memory_bytes=memory_bytes()[0])


@functools.cache
def qemu_version(binary: str = "qemu-system-x86_64") -> str | None:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"version (\S+)", out)
    return match.group(1) if match else None


def info(accel: Accel) -> dict[str, Any]:
    total, available = memory_bytes()
    return {
        "cpus": os.cpu_count() or 1,
        "memory_bytes": total,
        "memory_available_bytes": available,
        "accel": accel.name,
        "accel_reason": accel.reason,
        "qemu_version": qemu_version(),
        "kernel": os.uname().release,
        "hostname": os.uname().nodename,
    }
