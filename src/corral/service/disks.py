"""Named disks: made once, attached to one VM at a time, hot-plugged into running ones.

A named disk is a qcow2 or raw file under ``$CORRAL_HOME/disks``, optionally a linked clone of
an image's disk (``--from``). Attaching to a running q35 VM is a hot-plug: ``blockdev-add``
then ``device_add`` behind one of the VM's empty PCIe root ports; detaching is ``device_del``,
the wait for the guest to let go (``DEVICE_DELETED``), then ``blockdev-del``. IO limits are
QEMU's throttling (``block_set_io_throttle``); statistics come from ``query-blockstats``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral.domain.sizes import format_size, parse_size
from corral.domain.specs import DiskSpec, check_name
from corral.domain.states import LIVE, State
from corral.engine.qemu.argv import HOTPLUG_PORTS
from corral.errors import AlreadyExists, CorralError, InvalidSpec, InvalidState, NotFound
from corral.host import qemu_img
from corral.images import catalog
from corral.service import access, quotas

if TYPE_CHECKING:
    from corral.engine.driver import Machine
    from corral.service.runtime import VMRuntime
    from corral.store.db import VMRecord

ATTACHABLE = (State.DEFINED, State.STOPPED, State.CRASHED, State.RUNNING, State.PAUSED)
UNPLUG_PAUSED = "a paused guest cannot let go of a device; resume it first"


def _row(rt: VMRuntime, name: str) -> dict[str, Any]:
    row = rt.db.get_disk(name)
    if row is None or not access.visible(row["project"]):
        raise NotFound(f"no disk named '{name}'; see 'corral disk list'")
    return row


async def create(rt: VMRuntime, name: str, size: str | None, fmt: str = "qcow2",
                 source: str | None = None) -> dict[str, Any]:
    """Make a blank disk of ``size``, or a linked clone of image ``source``'s disk.

    :raises InvalidSpec: bad name, size or format; an image without a disk.
    :raises AlreadyExists: the name is taken.
    """
    check_name(name, "name")
    if fmt not in ("qcow2", "raw"):
        raise InvalidSpec("format", f"'{fmt}' is not a disk format; use qcow2 or raw")
    if rt.db.get_disk(name) is not None:
        raise AlreadyExists(f"a disk named '{name}' exists")
    project = access.project_for_new()
    if size:
        await quotas.check_disk(rt, project, parse_size("size", size, default_unit="G"))
    root = rt.paths.home / "disks"
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{name}.{fmt}"
    if source is not None:
        image = catalog.resolve(rt.paths, source)
        base = image.manifest.get("disk")
        if not base:
            raise InvalidSpec("from", f"image '{source}' has no disk to clone")
        if fmt != "qcow2":
            raise InvalidSpec("format", "a disk made --from an image is a qcow2 overlay")
        await qemu_img.acreate(path, "qcow2",
                               parse_size("size", size, default_unit="G") if size else None,
                               backing=image.dir / str(base), backing_format="qcow2")
    else:
        if not size:
            raise InvalidSpec("size", "give the size of the new disk, e.g. --size 10G")
        await qemu_img.acreate(path, fmt, parse_size("size", size, default_unit="G"))
    try:
        rt.db.add_disk({"name": name, "path": str(path), "format": fmt, "project": project})
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return await show(rt, name)


async def show(rt: VMRuntime, name: str) -> dict[str, Any]:
    row = _row(rt, name)
    info = await qemu_img.ainfo(row["path"])
    return {**row, "size_bytes": info.virtual_size, "allocated_bytes": info.actual_size,
            "backing": info.backing_path}


async def list_all(rt: VMRuntime) -> list[dict[str, Any]]:
    return [await show(rt, row["name"]) for row in rt.db.list_disks()
            if access.in_scope(row["project"])]


async def resize(rt: VMRuntime, name: str, size: str) -> dict[str, Any]:
    """Grow a disk (``block_resize`` when its VM runs, else ``qemu-img resize``).

    :raises InvalidSpec: a size smaller than the disk (shrinking loses data).
    :raises QuotaExceeded: the disk's project has no room for the difference.
    """
    row = _row(rt, name)
    new = parse_size("size", size, default_unit="G")
    current = (await qemu_img.ainfo(row["path"])).virtual_size
    if new < current:
        raise InvalidSpec("size", f"{size} is smaller than the disk ({format_size(current)}); "
                                  "disks only grow")
    await quotas.check_disk(rt, row["project"], new - current)  # growing counts like making
    vm = rt.db.get_vm(row["vm"]) if row["vm"] else None
    if vm is not None and vm.state in LIVE:
        machine = rt.machine(vm).machine
        node = _find(vm, name)[1].node(_find(vm, name)[0])
        await machine.resize_disk(node, new)
    else:
        await qemu_img.aresize(row["path"], row["format"], new)
    return await show(rt, name)


async def remove(rt: VMRuntime, name: str) -> None:
    """:raises InvalidState: while the disk is attached to a VM."""
    row = _row(rt, name)
    if row["vm"]:
        raise InvalidState(name, "remove", f"attached to '{row['vm']}'",
                           ["detached (corral detach-disk)"], what="disk")
    Path(row["path"]).unlink(missing_ok=True)
    rt.db.delete_disk(name)


def _find(rec: VMRecord, disk: str) -> tuple[int, DiskSpec]:
    for i, spec in enumerate(rec.spec.disks):
        if spec.name == disk:
            return i, spec
    raise NotFound(f"disk '{disk}' is not attached to '{rec.name}'")


def check_pluggable(rec: VMRecord, what: str) -> bool:
    """Whether a ``what`` (disk, NIC) can be attached to the VM now; True if it must be
    hot-plugged into a running QEMU.

    :raises InvalidState: the VM is busy, or a running microvm (it has no hot-plug).
    """
    if rec.state not in ATTACHABLE:
        raise InvalidState(rec.name, f"attach a {what} to", rec.state.value,
                           [s.value for s in ATTACHABLE])
    live = rec.state in LIVE
    if live and rec.spec.machine == "microvm":
        raise InvalidState(rec.name, f"hot-plug a {what} into", "a running microvm",
                           ["stopped (microvm has no hot-plug; use q35)"])
    return live


def _free_port(rec: VMRecord) -> str:
    used = {d.port for d in rec.spec.disks} | {n.port for n in rec.spec.nics}  # NICs too
    for i in range(HOTPLUG_PORTS):
        if f"hp{i}" not in used:
            return f"hp{i}"
    raise CorralError(f"'{rec.name}' has no free hot-plug port ({HOTPLUG_PORTS} in use)")


async def attach(rt: VMRuntime, vm: str, name: str, readonly: bool = False,
                 iops: int | None = None, bps: int | None = None) -> dict[str, Any]:
    """Attach a named disk; hot-plug it when the VM runs.

    :raises InvalidState: the disk is attached elsewhere, or the VM cannot take it now.
    """
    async with rt.lock(vm):
        rec = rt.get(vm)
        row = _row(rt, name)
        if row["vm"]:
            raise InvalidState(name, "attach", f"attached to '{row['vm']}'",
                               ["detached"], what="disk")
        live = check_pluggable(rec, "disk")
        ids = {d.node(i) for i, d in enumerate(rec.spec.disks)}
        node = next(f"disk{i}" for i in range(len(ids) + 1) if f"disk{i}" not in ids)
        disk = DiskSpec(path=row["path"], format=row["format"], readonly=readonly, owned=False,
                        id=node, name=name, iops=iops, bps=bps,
                        port=_free_port(rec) if rec.spec.machine == "q35" else None)
        if live:
            await _hotplug(rt.machine(rec).machine, disk, node)
        rec.spec.disks.append(disk)
        rt.db.set_disk_vm(name, vm, rec)
        return rt.view(rec)


async def _hotplug(machine: Machine, disk: DiskSpec, node: str) -> None:
    await machine.add_disk(disk, node)
    try:
        await apply_limits(machine, disk, node)
    except CorralError:  # take the device back out; the guest never had time to use it
        await machine.remove_disk(node, timeout=0)
        raise


async def apply_limits(machine: Machine, disk: DiskSpec, node: str, pci: bool = True) -> None:
    """Set the disk's IO limits (0 = none) on the running VM."""
    if disk.iops is None and disk.bps is None:
        return
    await machine.set_io_limits(node, disk.iops or 0, disk.bps or 0, pci)


async def detach(rt: VMRuntime, vm: str, name: str, timeout: float = 30.0) -> dict[str, Any]:
    """Detach a named disk; a running guest is asked to let go first.

    :raises Timeout: when the guest does not release the device in time (it stays attached).
    """
    async with rt.lock(vm):
        rec = rt.get(vm)
        index, disk = _find(rec, name)
        node = disk.node(index)
        if rec.state == State.PAUSED:
            raise InvalidState(vm, f"detach disk '{name}' from", "paused", [],
                               because=UNPLUG_PAUSED)
        if rec.state in LIVE:
            await rt.machine(rec).machine.remove_disk(node, timeout)
        rec.spec.disks.pop(index)
        rt.db.set_disk_vm(name, None, rec)
        return rt.view(rec)
