"""A project's quotas: how many VMs, vCPUs, bytes of guest memory and bytes of virtual disk
its objects may hold. Every VM of the project counts, whatever its state (a stopped VM may
start at any time); disks count by their virtual size (named disks, the disks Corral made
for the project's VMs, and the copies their warm-start templates keep). A request that would
go over is refused with :class:`~corral.errors.QuotaExceeded` naming the quota, before
anything is made.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from corral.domain.sizes import format_size
from corral.errors import CorralError, QuotaExceeded
from corral.host import qemu_img

if TYPE_CHECKING:
    from corral.service.runtime import VMRuntime


def usage(rt: VMRuntime, project: str) -> dict[str, int]:
    """VMs, vCPUs and guest memory the project holds (disk: see :func:`disk_usage`)."""
    recs = [r for r in rt.db.list_vms() if r.project == project]
    return {"vms": len(recs), "cpus": sum(r.spec.cpus for r in recs),
            "memory": sum(r.spec.memory_bytes for r in recs)}


async def disk_usage(rt: VMRuntime, project: str) -> int:
    paths = [Path(row["path"]) for row in rt.db.list_disks() if row["project"] == project]
    recs = [r for r in rt.db.list_vms() if r.project == project]
    paths += [Path(d.path) for r in recs for d in r.spec.disks if d.owned and d.name is None]
    # the copies kept by warm-start templates (:mod:`.warm`) are disk the project holds too
    paths += [p for r in recs for p in (rt.paths.vm_dir(r.name) / "templates").glob("*/disk*")]
    total = 0
    for path in paths:
        if path.exists():
            with contextlib.suppress(CorralError):  # a disk qemu-img cannot read counts 0
                total += (await qemu_img.ainfo(path)).virtual_size
    return total


def _refuse(project: str, quota: str, limit: int, requested: int, what: str) -> None:
    raise QuotaExceeded(f"project '{project}' would go over its quota {quota} = {what}; "
                        "raise it with 'corral project set' or free some",
                        project=project, quota=quota, limit=limit, requested=requested)


def check_vm(rt: VMRuntime, project: str, cpus: int, memory: int, vms: int = 1) -> None:
    """:raises QuotaExceeded: one more VM of ``cpus`` and ``memory`` bytes does not fit
    (with ``vms=0``: a VM that grows by that much)."""
    row = rt.db.access.projects.get(project)
    if row is None:
        return
    used = usage(rt, project)
    if row.max_vms is not None and vms and used["vms"] + vms > row.max_vms:
        _refuse(project, "max_vms", row.max_vms, used["vms"] + vms, str(row.max_vms))
    if row.max_cpus is not None and cpus > 0 and used["cpus"] + cpus > row.max_cpus:
        _refuse(project, "max_cpus", row.max_cpus, used["cpus"] + cpus, str(row.max_cpus))
    if row.max_memory is not None and memory > 0 and used["memory"] + memory > row.max_memory:
        _refuse(project, "max_memory", row.max_memory, used["memory"] + memory,
                format_size(row.max_memory))


def limits_disk(rt: VMRuntime, project: str) -> bool:
    """Whether ``project`` has a disk quota (what it asks for costs a look at each disk)."""
    row = rt.db.access.projects.get(project)
    return row is not None and row.max_disk is not None


async def check_disk(rt: VMRuntime, project: str, more: int, counted: bool = False) -> None:
    """:raises QuotaExceeded: ``more`` bytes of new virtual disk do not fit (``counted``:
    the disks just made are the project's already, and must fit)."""
    row = rt.db.access.projects.get(project)
    if row is None or row.max_disk is None or (more <= 0 and not counted):
        return
    used = await disk_usage(rt, project)
    if used + more > row.max_disk:
        _refuse(project, "max_disk", row.max_disk, used + more, format_size(row.max_disk))
