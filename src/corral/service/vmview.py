"""The view of a VM that every front door shows: the record, plus what only a live machine
has (pid, accelerator, uptime, boot time, console), plus the verbs legal in its state."""

from __future__ import annotations

import time
from typing import Any

from corral.config import Paths
from corral.domain.states import OPERATIONS
from corral.engine.driver import Driver
from corral.store.db import VMRecord


def vm_view(rec: VMRecord, live: bool, paths: Paths, driver: Driver | None = None
            ) -> dict[str, Any]:
    """``live``: the daemon holds a machine for the VM. With the ``driver``, a live VM's view
    tells what confines its process (user, seccomp, cgroup limits)."""
    return {
        "name": rec.name,
        "project": rec.project,
        "uid": rec.uid,
        "state": rec.state.value,
        "ready": rec.ready_at is not None and live,
        "accel": rec.accel if live else None,
        "pid": rec.pid if live else None,
        "cpus": rec.spec.cpus,
        "memory_bytes": rec.spec.memory_bytes,
        "machine": rec.spec.machine,
        "arch": rec.spec.arch,
        "image": rec.spec.image,
        "uptime_seconds": round(time.time() - rec.started_at, 3)
        if live and rec.started_at else None,
        "boot_seconds": rec.boot_seconds() if live else None,
        "exit_reason": rec.exit_reason,
        "last_migration": rec.spec.migrated.model_dump() if rec.spec.migrated else None,
        "nics": [n.model_dump() for n in rec.spec.nics],
        "disks": [d.model_dump() for d in rec.spec.disks],
        "console_socket": str(paths.run_dir(rec.name) / "console.sock") if live else None,
        "serial_log": str(paths.vm_dir(rec.name) / "serial.log"),
        "created_at": rec.created_at,
        "operations": sorted(op for op, states in OPERATIONS.items() if rec.state in states),
        "confinement": driver.confinement_of(rec.pid)
        if driver is not None and live and rec.pid else None,
    }
