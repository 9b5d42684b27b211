"""Batch VMs, the sandbox use case: boot a fresh VM (through the admission queue), run one
command in it through the guest agent, destroy it, and hand back the command's output and
exit code with the time spent waiting and running.

The daemon runs the whole job, so a client that goes away cannot leave a VM behind. Each
request's arrival, start and end are in the event log, and :func:`trace` turns them into a
trace that ``corral simulate --trace`` replays through the same scheduler code.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import TYPE_CHECKING, Any

from corral.errors import CorralError, NotFound

if TYPE_CHECKING:
    from corral.service.guest import GuestService
    from corral.service.runtime import VMRuntime
    from corral.service.vms import VMs

START_EVENTS = ("started", "warm_started", "restored")
END_EVENTS = ("stopped", "crashed", "destroyed", "saved")


async def run(vms: VMs, guest: GuestService, spec: dict[str, Any], argv: list[str],
              timeout: float, queue: bool = True, wait_timeout: float = 24 * 3600.0
              ) -> dict[str, Any]:
    """Create, start, run ``argv``, remove. ``spec`` is a create body without a name (one
    is made up unless given); ``from_snapshot`` makes it a warm start.

    :raises CorralError: as create and start do; the VM is removed whatever happens.
    """
    body = dict(spec)
    name = body.pop("name", None) or f"batch-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    try:
        await vms.create({"name": name, **body}, start=True, wait=True, timeout=wait_timeout,
                         queue=queue)
        t1 = time.monotonic()
        result = await guest.exec(name, argv, timeout)
    finally:
        with contextlib.suppress(NotFound, CorralError):
            await vms.rm(name)
    t2 = time.monotonic()
    return {**result, "name": name, "wait_and_boot_seconds": round(t1 - t0, 4),
            "run_seconds": round(t2 - t1, 4), "total_seconds": round(t2 - t0, 4)}


def trace(rt: VMRuntime) -> list[dict[str, Any]]:
    """Every start request with its arrival, start and end (wall clock seconds), from the
    event log: the input of ``corral simulate --trace``."""
    open_: dict[str, dict[str, Any]] = {}
    out: list[dict[str, Any]] = []
    for ev in rt.db.events(0, limit=1_000_000):
        vm, kind = ev["vm"], ev["kind"]
        if kind == "requested":
            d = ev["detail"]
            open_[vm] = {"vm": vm, "arrival": ev["ts"], "owner": d.get("owner", "default"),
                         "priority": d.get("priority", 0), "cpus": d.get("cpus", 1),
                         "memory": d.get("memory", 0),
                         "expected_runtime": d.get("expected_runtime")}
        elif kind in START_EVENTS and vm in open_ and "start" not in open_[vm]:
            open_[vm]["start"] = ev["ts"]
        elif kind in END_EVENTS and vm in open_ and "start" in open_[vm]:
            job = open_.pop(vm)
            job["end"] = ev["ts"]
            job["wait"] = round(job["start"] - job["arrival"], 4)
            job["runtime"] = round(job["end"] - job["start"], 4)
            out.append(job)
    return out
