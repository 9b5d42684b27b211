"""Named disks: made once, attached to one VM at a time, hot-plugged into running ones.

A named disk is a qcow2 or raw file under ``$CORRAL_HOME/disks``, optionally a linked clone of
an image's disk (``--from``). Attaching to a running q35 VM is a hot-plug: ``blockdev-add``
then ``device_add`` behind one of the VM's empty PCIe root ports; detaching is ``device_del``,
the wait for the guest to let go (``DEVICE_DELETED``), then ``blockdev-del``. IO limits are
QEMU's throttling (``block_set_io_throttle``); statistics come from ``query-blockstats``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral.domain.sizes import parse_size
from corral.domain.specs import DiskSpec, check_name
from corral.domain.states import LIVE, State
from corral.engine.qemu.argv import HOTPLUG_PORTS, disk_blockdev, disk_device
from corral.errors import AlreadyExists, CorralError, InvalidSpec, InvalidState, NotFound
from corral.host.runner import arun
from corral.images import catalog

if TYPE_CHECKING:
    from corral.service.manager import Manager, Runtime
    from corral.store.db import VMRecord

ATTACHABLE = (State.DEFINED, State.STOPPED, State.CRASHED, State.RUNNING, State.PAUSED)


def _row(m: Manager, name: str) -> dict[str, Any]:
    row = m.db.get_disk(name)
    if row is None:
        raise NotFound(f"no disk named '{name}'; see 'corral disk list'")
    return row


async def _info(path: str) -> dict[str, Any]:
    res = await arun(["qemu-img", "info", "--output=json", "-U", path])
    info: dict[str, Any] = json.loads(res.stdout)
    return info


async def create(m: Manager, name: str, size: str | None, fmt: str = "qcow2",
                 source: str | None = None) -> dict[str, Any]:
    """Make a blank disk of ``size``, or a linked clone of image ``source``'s disk.

    :raises InvalidSpec: bad name, size or format; an image without a disk.
    :raises AlreadyExists: the name is taken.
    """
    check_name(name, "name")
    if fmt not in ("qcow2", "raw"):
        raise InvalidSpec("format", f"'{fmt}' is not a disk format; use qcow2 or raw")
    if m.db.get_disk(name) is not None:
        raise AlreadyExists(f"a disk named '{name}' exists")
    root = m.paths.home / "disks"
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{name}.{fmt}"
    if source is not None:
        image = catalog.resolve(m.paths, source)
        base = image.manifest.get("disk")
        if not base:
            raise InvalidSpec("from", f"image '{source}' has no disk to clone")
        if fmt != "qcow2":
            raise InvalidSpec("format", "a disk made --from an image is a qcow2 overlay")
        argv: list[str | Path] = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
                                  "-b", str(image.dir / str(base)), path]
        if size:
            argv.append(str(parse_size("size", size, default_unit="G")))
    else:
        if not size:
            raise InvalidSpec("size", "give the size of the new disk, e.g. --size 10G")
        argv = ["qemu-img", "create", "-q", "-f", fmt, path,
                str(parse_size("size", size, default_unit="G"))]
    await arun(argv, what="qemu-img could not create the disk")
    try:
        m.db.add_disk({"name": name, "path": str(path), "format": fmt})
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return await show(m, name)


async def show(m: Manager, name: str) -> dict[str, Any]:
    row = _row(m, name)
    info = await _info(row["path"])
    return {**row, "size_bytes": info.get("virtual-size"),
            "allocated_bytes": info.get("actual-size"),
            "backing": info.get("full-backing-filename") or info.get("backing-filename")}


async def list_all(m: Manager) -> list[dict[str, Any]]:
    return [await show(m, row["name"]) for row in m.db.list_disks()]


async def resize(m: Manager, name: str, size: str) -> dict[str, Any]:
    """Grow a disk (``block_resize`` when its VM runs, else ``qemu-img resize``).

    :raises InvalidSpec: a size smaller than the disk (shrinking loses data).
    """
    row = _row(m, name)
    new = parse_size("size", size, default_unit="G")
    current = (await _info(row["path"]))["virtual-size"]
    if new < current:
        raise InvalidSpec("size", f"{size} is smaller than the disk ({current >> 20} MiB); "
                                  "disks only grow")
    vm = m.db.get_vm(row["vm"]) if row["vm"] else None
    if vm is not None and vm.state in LIVE:
        rt = m._runtime(vm)
        node = _find(vm, name)[1].node(_find(vm, name)[0])
        await rt.monitor.execute("block_resize", {"node-name": node, "size": new})
    else:
        await arun(["qemu-img", "resize", "-q", "-f", row["format"], row["path"], str(new)],
                   what="qemu-img could not resize the disk")
    return await show(m, name)


async def remove(m: Manager, name: str) -> None:
    """:raises InvalidState: while the disk is attached to a VM."""
    row = _row(m, name)
    if row["vm"]:
        raise InvalidState(name, "remove", f"attached to '{row['vm']}'",
                           ["detached (corral detach-disk)"], what="disk")
    Path(row["path"]).unlink(missing_ok=True)
    m.db.delete_disk(name)


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


async def attach(m: Manager, vm: str, name: str, readonly: bool = False,
                 iops: int | None = None, bps: int | None = None) -> dict[str, Any]:
    """Attach a named disk; hot-plug it when the VM runs.

    :raises InvalidState: the disk is attached elsewhere, or the VM cannot take it now.
    """
    async with m._lock(vm):
        rec = m._get(vm)
        row = _row(m, name)
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
            await _hotplug(m._runtime(rec), disk, node)
        rec.spec.disks.append(disk)
        m.db.set_disk_vm(name, vm, rec)
        return m._view(rec)


async def _hotplug(rt: Runtime, disk: DiskSpec, node: str) -> None:
    await rt.monitor.execute("blockdev-add", disk_blockdev(disk, node))
    try:
        await rt.monitor.execute("device_add", disk_device(disk, node, "pci", disk.port))
    except CorralError:
        await rt.monitor.execute("blockdev-del", {"node-name": node})
        raise
    try:
        await apply_limits(rt, disk, node)
    except CorralError:  # take the device back out; the guest never had time to use it
        await rt.monitor.execute("device_del", {"id": f"vd-{node}"})
        raise


async def apply_limits(rt: Runtime, disk: DiskSpec, node: str, pci: bool = True) -> None:
    """Set the disk's IO limits (0 = none) on the running VM."""
    if disk.iops is None and disk.bps is None:
        return
    # on PCI the limits sit on the virtio backend, the child of the PCI proxy device
    device = f"/machine/peripheral/vd-{node}" + ("/virtio-backend" if pci else "")
    await rt.monitor.execute("block_set_io_throttle", {
        "id": device, "iops": disk.iops or 0, "iops_rd": 0, "iops_wr": 0,
        "bps": disk.bps or 0, "bps_rd": 0, "bps_wr": 0})


async def detach(m: Manager, vm: str, name: str, timeout: float = 30.0) -> dict[str, Any]:
    """Detach a named disk; a running guest is asked to let go first.

    :raises Timeout: when the guest does not release the device in time (it stays attached).
    """
    async with m._lock(vm):
        rec = m._get(vm)
        index, disk = _find(rec, name)
        node = disk.node(index)
        if rec.state in LIVE:
            rt = m._runtime(rec)
            gone = rt.watch_event("DEVICE_DELETED", lambda d: d.get("device") == f"vd-{node}")
            await rt.monitor.execute("device_del", {"id": f"vd-{node}"})
            try:
                await asyncio.wait_for(gone, timeout)
            except TimeoutError as err:
                from corral.errors import Timeout

                raise Timeout(f"the guest in '{vm}' did not release disk '{name}' in "
                              f"{timeout:g} s") from err
            await rt.monitor.execute("blockdev-del", {"node-name": node})
        rec.spec.disks.pop(index)
        m.db.set_disk_vm(name, None, rec)
        return m._view(rec)


async def stats(rt: Runtime) -> dict[str, dict[str, int]]:
    """Read/write bytes and operations per disk node of a running VM."""
    out: dict[str, dict[str, int]] = {}
    for dev in await rt.monitor.execute("query-blockstats"):
        node = dev.get("node-name") or str(dev.get("qdev", "")).removeprefix("vd-")
        s = dev.get("stats", {})
        out[node] = {k: int(s.get(k, 0)) for k in
                     ("rd_bytes", "wr_bytes", "rd_operations", "wr_operations")}
    return out
