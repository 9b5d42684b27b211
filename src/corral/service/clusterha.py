"""High availability: VMs created ``--ha`` keep their files on the cluster's shared storage
(``cluster.shared``, a directory every host mounts) and are restarted on another host when
theirs is lost; fencing makes sure no VM runs twice.

* **Restart.** The leader looks for hosts silent for more than ``cluster.down_after`` plus
  :data:`GRACE` heartbeats; each ``--ha`` VM such a host still owns and that was live is
  placed again (the same placement code, on hosts labelled ``shared=yes``) and written as a
  *takeover* assignment. The chosen host moves the VM's cluster-wide name to itself in the
  same transaction that adds its record (:func:`corral.store.hostmoves.take_over_vm`: only one
  host can win), links its directory to the VM's files and starts it.
* **Fencing.** A host stops its copy of every VM whose name the cluster gives to another
  host and drops its record (the shared files stay): when its daemon starts, before it
  adopts anything, and after every heartbeat (a daemon that was frozen or cut off and comes
  back). A daemon that cannot reach the store for ``cluster.down_after`` seconds kills its
  own ``--ha`` VMs, since the leader is about to restart them elsewhere. On one machine (and
  on NFSv4 or Ceph) QEMU's image locks refuse a second writer besides.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral.domain.specs import VMSpec
from corral.domain.states import LIVE, State
from corral.errors import AlreadyExists, CorralError
from corral.store import hostmoves
from corral.store.assignments import cluster_vms
from corral.store.db import VMRecord

if TYPE_CHECKING:
    from collections.abc import Collection

    from corral.service.runtime import VMRuntime
    from corral.store.assignments import Assignments
    from corral.store.cluster import ClusterStore

log = logging.getLogger(__name__)
GRACE = 2  # heartbeats a down host's own self-fencing gets before its VMs are restarted
LIVE_STATES = {s.value for s in LIVE}


async def fence_moved(rt: VMRuntime, cs: ClusterStore,
                      leaving: Collection[str] = ()) -> list[str]:
    """Stop and forget every VM of this host that the cluster now gives to another host,
    except those ``leaving`` by a live migration of this daemon's: the name moves to the
    target before the source hears the outcome, and the migration lets go of its copy itself.

    :raises StoreUnavailable: the store cannot be read (nothing is fenced).
    """
    owned = await asyncio.to_thread(cs.owned_names)
    fenced = []
    for rec in rt.db.list_vms():
        if rec.name in owned or rec.name in leaving:
            continue
        log.warning("fencing %s: another host runs it now", rec.name)
        await _kill(rt, rec)
        hostmoves.forget_vm(rt.db, rec.name)
        link = rt.paths.vm_dir(rec.name)
        if link.is_symlink():
            link.unlink()
        shutil.rmtree(rt.run_dir(rec.name), ignore_errors=True)
        rt.forget(rec.name)
        fenced.append(rec.name)
    return fenced


async def _kill(rt: VMRuntime, rec: VMRecord) -> None:
    live = rt.live.get(rec.name)
    machine = live.machine if live is not None else None
    if machine is None and rec.pid is not None:
        with contextlib.suppress(CorralError, OSError):
            machine = await rt.driver.adopt(rec.spec, rt.run_dir(rec.name), rec.pid,
                                            rec.pid_start, lambda _kind, _data: None)
    if machine is None:
        return
    machine.kill()
    await machine.wait_exit(10)
    for _ in range(100):  # the runtime lets go of a machine it watched
        if rec.name not in rt.live:
            break
        await asyncio.sleep(0.05)


def self_fence(rt: VMRuntime) -> list[str]:
    """Kill this host's ``--ha`` VMs (the store has been out of reach too long)."""
    killed = []
    for rec in rt.db.list_vms():
        live = rt.live.get(rec.name)
        if rec.spec.sched.ha and live is not None:
            live.machine.kill()
            killed.append(rec.name)
    return killed


def lost_ha_vms(cs: ClusterStore, rows: list[dict[str, Any]], limit: float
                ) -> list[tuple[str, dict[str, Any]]]:
    """(host, VM row) of every live ``--ha`` VM still owned by a host silent over ``limit``."""
    out = []
    for host in (r["name"] for r in rows if r["silent_seconds"] > limit):
        for row in cluster_vms(cs, [host]):  # the VMs the cluster still gives it
            spec = json.loads(row["spec"])
            if spec.get("sched", {}).get("ha") and row["state"] in LIVE_STATES:
                out.append((host, {**row, "spec": spec}))
    return out


def ha_request(spec: dict[str, Any], name: str) -> dict[str, Any]:
    """The placement request (as stored) of an HA VM to restart."""
    cpus = 0 if spec["sched"].get("timeslice") else spec["cpus"]
    return {"id": name, "cpus": max(cpus, 1), "memory": spec["memory_bytes"],
            "labels": {"shared": "yes"}, "affinity": None, "anti_affinity": None, "host": None}


async def take_over(rt: VMRuntime, cs: ClusterStore, name: str, old_host: str) -> VMRecord:
    """Make VM ``name`` of lost host ``old_host`` this host's (its files are on shared
    storage) and return its record, stopped; the caller starts it.

    :raises AlreadyExists: another host took it over first, or it is gone.
    """
    row = await asyncio.to_thread(cs.vm_row, old_host, name)
    if row is None:
        raise AlreadyExists(f"VM '{name}' is no longer on host {old_host}")
    spec = VMSpec.model_validate_json(row["spec"])
    files = Path(spec.vmstate).parent if spec.vmstate else None
    link = rt.paths.vm_dir(name)
    if files is None or not files.is_dir():
        raise CorralError(f"the files of '{name}' are not on this host's shared storage "
                          f"({files})")
    if link.is_symlink() or link.exists():
        link.unlink()
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(files)
    rec = VMRecord(name=name, uid=row["uid"], spec=spec, state=State.STOPPED,
                   exit_reason=f"host {old_host} was lost", project=row.get("project")
                   or "default")
    try:
        await asyncio.to_thread(hostmoves.take_over_vm, rt.db, rec, old_host)
    except BaseException:
        link.unlink(missing_ok=True)
        raise
    return rec


def restart_lost(cs: ClusterStore, work: Assignments, rows: list[dict[str, Any]],
                 limit: float, choose: Any) -> None:
    """(Leader) write a takeover assignment for each lost ``--ha`` VM on a host that fits;
    ``choose(request) -> host or None``."""
    pending = {a["vm"] for a in work.waiting()}
    for host, row in lost_ha_vms(cs, rows, limit):
        if row["name"] in pending:
            continue
        request = ha_request(row["spec"], row["name"])
        target = choose(request)
        if target is None:
            log.warning("leader: no host can take %s over from %s", row["name"], host)
            continue
        with contextlib.suppress(AlreadyExists):
            work.add_takeover(row["name"], host, request, target)
            log.info("leader: %s of lost host %s restarts on %s", row["name"], host, target)
