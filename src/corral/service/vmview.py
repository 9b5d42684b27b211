"""The view of a VM that every front door shows: the record, plus what only a live machine
has (pid, accelerator, uptime, boot time, console), plus the verbs legal in its state."""

from __future__ import annotations

import functools
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
        "console_socket": _files(paths, rec.name)[0] if live else None,
        "serial_log": _files(paths, rec.name)[1],
        "created_at": rec.created_at,
        "operations": sorted(op for op, states in OPERATIONS.items() if rec.state in states),
        "confinement": driver.confinement_of(rec.pid)
        if driver is not None and live and rec.pid else None,
    }


@functools.lru_cache(maxsize=1024)
def _files(paths: Paths, name: str) -> tuple[str, str]:
    """The console socket and serial log of VM ``name`` (making the paths cost more than the
    rest of the view: a pause answers with it)."""
    return str(paths.run_dir(name) / "console.sock"), str(paths.vm_dir(name) / "serial.log")
