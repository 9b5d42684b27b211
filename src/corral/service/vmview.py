"""The view of a VM that every front door shows: the record, plus what only a live machine
has (pid, accelerator, uptime, boot time, console), plus the verbs legal in its state."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from corral.config import Paths
from corral.domain.states import OPERATIONS
from corral.engine.driver import Driver
from corral.store.db import VMRecord

_DIRS: dict[Path, tuple[str, str]] = {}  # home -> its run directory and its VMs', as text


def _dirs(paths: Paths) -> tuple[str, str]:
    """Where a VM's console and serial log are: asked once per home, not per VM per list
    (``Paths`` makes a few ``Path`` objects for each, a fifth of the list's time)."""
    found = _DIRS.get(paths.home)
    if found is None:
        found = _DIRS[paths.home] = (str(paths.run_dir("_").parent),
                                     str(paths.vm_dir("_").parent))
    return found


def vm_view(rec: VMRecord, live: bool, paths: Paths, driver: Driver | None = None
            ) -> dict[str, Any]:
    """``live``: the daemon holds a machine for the VM. With the ``driver``, a live VM's view
    tells what confines its process (user, seccomp, cgroup limits)."""
    run, vms = _dirs(paths)
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
        "console_socket": f"{run}/{rec.name}/console.sock" if live else None,
        "serial_log": f"{vms}/{rec.name}/serial.log",
        "created_at": rec.created_at,
        "operations": sorted(op for op, states in OPERATIONS.items() if rec.state in states),
        "confinement": driver.confinement_of(rec.pid)
        if driver is not None and live and rec.pid else None,
    }
