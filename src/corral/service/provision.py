"""Files for new VMs: blank qcow2/raw disks made with ``qemu-img``, uploaded disk images and
boot files taken into the VM's directory, files used in place checked (see
:mod:`.hostpaths`) with ``qemu-img info``."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path

from corral.config import Paths
from corral.domain.sizes import parse_size
from corral.domain.specs import DiskRequest, DiskSpec, VMCreate
from corral.errors import CommandFailed, CorralError, InvalidSpec
from corral.host import qemu_img
from corral.host.qemu_img import Format
from corral.service import hostpaths
from corral.service.uploads import PREFIX, Uploads

MAX_CHAIN = 16


async def make_root(image_disk: Path, vm_dir: Path, bus: str, boot: bool) -> DiskSpec:
    """A qcow2 overlay of an image's root disk (a linked clone: the image stays read-only)."""
    info = await qemu_img.ainfo(image_disk)
    path = vm_dir / "root.qcow2"
    await qemu_img.acreate(path, "qcow2", backing=image_disk.absolute(),
                           backing_format=info.format,
                           what="qemu-img could not make the VM's root disk")
    return DiskSpec(path=str(path), format="qcow2", id="root",
                    bus="nvme" if bus == "nvme" else "virtio", boot=boot)


def seed_user_data(req: VMCreate) -> str:
    """The user-data of the VM's seed: its own, checked, else the default one.

    :raises InvalidSpec: user-data or a hostname cloud-init would not accept.
    """
    from corral.images import cloudinit

    if req.user_data is None:
        return cloudinit.default_user_data(req.hostname or req.name, req.ssh_keys or [])
    cloudinit.check_user_data(req.user_data)
    return req.user_data


def make_seed(vm_dir: Path, req: VMCreate) -> DiskSpec:
    """A cloud-init NoCloud seed (``cidata``) for the VM, attached read-only. Without
    user-data, a default one sets the hostname and makes user ``corral`` with the keys.

    :raises InvalidSpec: user-data or a hostname cloud-init would not accept.
    """
    from corral.images import cloudinit

    hostname = req.hostname or req.name
    keys = req.ssh_keys or []
    user_data = seed_user_data(req)
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


async def prepare_disks(requests: list[DiskRequest], vm_dir: Path,
                        home: Path) -> list[DiskSpec]:
    """Make or check each disk. Files made here (and uploads taken) live in ``vm_dir`` and
    go with the VM; a path is used in place only where :mod:`.hostpaths` allows it.

    :raises InvalidSpec: a path that is missing or not a disk image.
    :raises PathNotAllowed: a path (or its backing file) outside the allowed directories.
    """
    disks: list[DiskSpec] = []
    for i, req in enumerate(requests):
        if req.size is not None:
            fmt = req.format or "qcow2"
            path = vm_dir / f"disk{i}.{fmt}"
            size = parse_size(f"disks.{i}.size", req.size, default_unit="G")
            await qemu_img.acreate(path, fmt, size, what="qemu-img could not create the disk")
            disks.append(DiskSpec(path=str(path), format=fmt, readonly=req.readonly))
        elif req.upload is not None:
            field = f"disks.{i}.upload"
            source = Uploads(home).path(req.upload, field)
            fmt = await _own_image_format(field, source, req.format)
            path = vm_dir / f"disk{i}.{fmt}"
            shutil.move(source, path)  # an HA VM's directory may be on another file system
            disks.append(DiskSpec(path=str(path), format=fmt, readonly=req.readonly))
        else:
            assert req.path is not None
            field = f"disks.{i}.path"
            paths = Paths(home)
            path = hostpaths.check(field, req.path, paths, block_ok=True)
            fmt = await _in_place_format(field, path, req.format, paths)
            disks.append(DiskSpec(path=str(path), format=fmt, readonly=req.readonly,
                                  owned=False))
    return disks


async def _info(field: str, path: Path) -> qemu_img.ImageInfo:
    try:
        return await qemu_img.ainfo(path)
    except (CommandFailed, ValueError) as err:
        raise InvalidSpec(field, f"'{path}' is not a disk image") from err


async def _own_image_format(field: str, path: Path, declared: Format | None) -> Format:
    """The format of an uploaded disk image, which may name no other file.

    :raises InvalidSpec: not a disk image, or one with a backing or data file.
    """
    info = await _info(field, path)
    if info.backing_file or info.data_file:
        raise InvalidSpec(field, "an uploaded disk image may not name a backing file or an "
                                 "external data file; convert it to a standalone image")
    return declared or ("qcow2" if info.format == "qcow2" else "raw")


async def _in_place_format(field: str, path: Path, declared: Format | None,
                           paths: Paths) -> Format:
    """The format of a disk used in place; every file of its backing chain must be one a
    client may name (:func:`hostpaths.check_image_refs`).

    :raises InvalidSpec: not a disk image. :raises PathNotAllowed: a file of its chain.
    """
    info = await _info(field, path)
    fmt: Format = declared or ("qcow2" if info.format == "qcow2" else "raw")
    layer, depth = info, 0
    while fmt == "qcow2" and (layer.backing_path or layer.data_file):
        hostpaths.check_image_refs(field, layer.backing_path, layer.data_file, paths)
        depth += 1
        if layer.backing_path is None or depth > MAX_CHAIN:
            break
        layer = await _info(field, Path(layer.backing_path))
    if depth > MAX_CHAIN:
        raise InvalidSpec(field, f"its backing chain is deeper than {MAX_CHAIN}")
    return fmt


def drop_uploads(req: VMCreate, home: Path) -> None:
    """Remove the uploads ``req`` names that are still there (a failed define)."""
    uploads = Uploads(home)
    refs = [t[len(PREFIX):] for t in (req.kernel, req.initrd) if t and t.startswith(PREFIX)]
    refs += [d.upload for d in req.disks if d.upload]
    for ref in refs:
        with contextlib.suppress(CorralError):
            uploads.path(ref).unlink(missing_ok=True)


def check_boot_file(field: str, text: str, home: Path) -> None:
    """What :func:`boot_file` would refuse, checked before anything is made or taken.

    :raises PathNotAllowed: a path outside the allowed directories.
    :raises NotFound: no such upload.
    """
    if Uploads(home).ref(field, text) is None:
        hostpaths.check(field, text, Paths(home))


def boot_file(field: str, text: str, vm_dir: Path, home: Path) -> str:
    """A kernel or initrd a client asked for: an upload (``upload:ID``), moved into
    ``vm_dir`` under ``field``'s name, or a path the host allows to be used in place.

    :raises PathNotAllowed: a path outside the allowed directories.
    :raises NotFound: no such upload.
    """
    upload = Uploads(home).ref(field, text)
    if upload is None:
        return str(hostpaths.check(field, text, Paths(home)))
    target = vm_dir / field
    shutil.move(upload, target)
    return str(target)


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
    # the confined QEMU (another user) must pass through to its VM's directory, which is
    # handed over to it at launch; the listing stays root's
    os.chmod(target.parent, 0o711)
    vm_dir.parent.mkdir(parents=True, exist_ok=True)
    vm_dir.symlink_to(target)


def remove_vm_dir(vm_dir: Path) -> None:
    """Remove a VM's directory and, for a link to shared storage, what it points to."""
    if vm_dir.is_symlink():
        shutil.rmtree(vm_dir.resolve(), ignore_errors=True)
        vm_dir.unlink(missing_ok=True)
    else:
        shutil.rmtree(vm_dir, ignore_errors=True)
