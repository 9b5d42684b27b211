"""Disks for new VMs: blank qcow2/raw files made with ``qemu-img``, or existing files checked
with ``qemu-img info``."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from corral.domain.sizes import parse_size
from corral.domain.specs import DiskRequest, DiskSpec, VMCreate
from corral.errors import CommandFailed, InvalidSpec
from corral.host import qemu_img


async def make_root(image_disk: Path, vm_dir: Path, bus: str, boot: bool) -> DiskSpec:
    """A qcow2 overlay of an image's root disk (a linked clone: the image stays read-only)."""
    info = await qemu_img.ainfo(image_disk)
    path = vm_dir / "root.qcow2"
    await qemu_img.acreate(path, "qcow2", backing=image_disk.absolute(),
                           backing_format=info.format,
                           what="qemu-img could not make the VM's root disk")
    return DiskSpec(path=str(path), format="qcow2", id="root",
                    bus="nvme" if bus == "nvme" else "virtio", boot=boot)


def make_seed(vm_dir: Path, req: VMCreate) -> DiskSpec:
    """A cloud-init NoCloud seed (``cidata``) for the VM, attached read-only. Without
    user-data, a default one sets the hostname and makes user ``corral`` with the keys.

    :raises InvalidSpec: user-data or a hostname cloud-init would not accept.
    """
    from corral.images import cloudinit

    hostname = req.hostname or req.name
    keys = req.ssh_keys or []
    user_data = req.user_data
    if user_data is None:
        user_data = cloudinit.default_user_data(hostname, keys)
    else:
        cloudinit.check_user_data(user_data)
    meta: dict[str, object] = {"instance-id": f"{req.name}-{uuid.uuid4().hex[:8]}",
                               "local-hostname": hostname}
    if keys:
        meta["public-keys"] = keys
    path = cloudinit.make_seed(vm_dir / "seed.iso", user_data=user_data, meta_data=meta)
    # virtio-blk, not an IDE CD: cloud kernels have no AHCI driver
    return DiskSpec(path=str(path), format="raw", readonly=True, id="seed")


async def make_vmstate(vm_dir: Path) -> str:
    """The small qcow2 file, seen by no guest device, where memory snapshots keep RAM."""
    path = vm_dir / "vmstate.qcow2"
    # an empty qcow2 is the same every time: make it once, then copy it (warm starts count
    # the milliseconds a qemu-img process costs)
    blank = vm_dir.parent.parent / ".blank-vmstate.qcow2"  # in $CORRAL_HOME
    if not blank.is_file():
        tmp = blank.with_name(f".blank-vmstate.{uuid.uuid4().hex[:6]}.qcow2")
        await qemu_img.acreate(tmp, "qcow2", 1 << 30,
                               what="qemu-img could not create the snapshot state file")
        tmp.rename(blank)
    shutil.copyfile(blank, path)
    return str(path)


async def prepare_disks(requests: list[DiskRequest], vm_dir: Path) -> list[DiskSpec]:
    """Make or check each disk. Files made here live in ``vm_dir`` and go with the VM.

    :raises InvalidSpec: a path that is missing or not a disk image.
    """
    disks: list[DiskSpec] = []
    for i, req in enumerate(requests):
        if req.size is not None:
            fmt = req.format or "qcow2"
            path = vm_dir / f"disk{i}.{fmt}"
            size = parse_size(f"disks.{i}.size", req.size, default_unit="G")
            await qemu_img.acreate(path, fmt, size, what="qemu-img could not create the disk")
            disks.append(DiskSpec(path=str(path), format=fmt, readonly=req.readonly))
            continue
        assert req.path is not None
        path = Path(req.path).expanduser().absolute()
        if not path.is_file():
            raise InvalidSpec(f"disks.{i}.path", f"no file '{req.path}'")
        try:
            detected = (await qemu_img.ainfo(path)).format
        except (CommandFailed, ValueError) as err:
            raise InvalidSpec(f"disks.{i}.path", f"'{req.path}' is not a disk image") from err
        fmt = req.format or ("qcow2" if detected == "qcow2" else "raw")
        disks.append(DiskSpec(path=str(path), format=fmt, readonly=req.readonly, owned=False))
    return disks


def make_vm_dir(vm_dir: Path, ha: bool) -> None:
    """A new VM's directory; for an ``ha`` VM a link to its directory on the cluster's
    shared storage (``cluster.shared``), where every host finds its files.

    :raises InvalidSpec: ``ha`` without shared storage.
    """
    if not ha:
        vm_dir.mkdir(parents=True)
        return
    from corral import settings

    shared = str(settings.value("cluster.shared"))
    if not shared or not settings.value("cluster.url"):
        raise InvalidSpec("ha", "an HA VM needs a cluster with shared storage (corral serve "
                                "--cluster URL, CORRAL_SHARED_DIR on every host)")
    # a directory of its own: two hosts defining the same name at once never share one
    target = Path(shared) / "vms" / f"{vm_dir.name}-{uuid.uuid4().hex[:8]}"
    target.mkdir(parents=True)
    vm_dir.parent.mkdir(parents=True, exist_ok=True)
    vm_dir.symlink_to(target)


def remove_vm_dir(vm_dir: Path) -> None:
    """Remove a VM's directory and, for a link to shared storage, what it points to."""
    if vm_dir.is_symlink():
        shutil.rmtree(vm_dir.resolve(), ignore_errors=True)
        vm_dir.unlink(missing_ok=True)
    else:
        shutil.rmtree(vm_dir, ignore_errors=True)
