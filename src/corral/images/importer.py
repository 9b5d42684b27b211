"""``corral image import``: make a disk image file (qcow2 or raw, e.g. a distribution's cloud
image) into a Corral image that VMs boot from their own overlays of.

The file is checked with ``qemu-img info`` (and ``qemu-img check`` for qcow2) before anything
is written; a corrupt file or one that is no disk image is refused with a clear error. It is
converted to a compressed-free qcow2 under a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from corral.domain.specs import check_name
from corral.errors import AlreadyExists, CommandFailed, InvalidSpec
from corral.host import qemu_img


def inspect(file: Path, shown: str | None = None) -> qemu_img.ImageInfo:
    """``qemu-img info`` of ``file``, called ``shown`` in errors (an upload's own path means
    nothing to its user).

    :raises InvalidSpec: not a file, not a disk image, or a damaged qcow2.
    """
    what = shown or str(file)
    if not file.is_file():
        raise InvalidSpec("file", f"no file '{what}'")
    try:
        info = qemu_img.info(file, force_share=False)
    except (CommandFailed, ValueError) as err:
        raise InvalidSpec("file", f"{what} is not a disk image qemu-img can read") from err
    fmt = info.format
    if fmt not in ("qcow2", "raw"):
        raise InvalidSpec("file", f"{what} is a {fmt} image; import qcow2 or raw")
    if fmt == "raw" and not _looks_like_a_disk(file):
        raise InvalidSpec("file", f"{what} has no partition table or file system: it is not "
                                  "a disk image")
    if info.backing_file or info.data_file:  # files QEMU would open on the image's behalf
        raise InvalidSpec("file", f"{what} names a backing file or an external data file; "
                                  "import a standalone image (qemu-img convert makes one)")
    if fmt == "qcow2" and not qemu_img.check_intact(file):
        raise InvalidSpec("file", f"{what} is a damaged qcow2 (qemu-img check failed)")
    return info


def _looks_like_a_disk(file: Path) -> bool:
    with file.open("rb") as f:
        head = f.read(4096)
        f.seek(1024 + 56)
        ext_magic = f.read(2)
    mbr = len(head) >= 512 and head[510:512] == b"\x55\xaa"
    gpt = head[512:520] == b"EFI PART"
    return mbr or gpt or ext_magic == b"\x53\xef" or head[:4] in (b"XFSB", b"hsqs")


def import_image(root: Path, name: str, file: Path, *, agent: bool = False,
                 arch: str = "x86_64", root_device: str = "virtio",
                 progress: Callable[[str, float], None] | None = None,
                 source_name: str | None = None, shown: str | None = None) -> Path:
    """Import ``file`` as image ``name`` under ``root``; ``source_name`` is what the
    manifest records as its source (default: ``file``), ``shown`` what errors call the file
    (default: its path).

    :raises InvalidSpec: a bad name or file. :raises AlreadyExists: the name is taken.
    """
    check_name(name, "name")
    dest = root / name
    if dest.exists():
        raise AlreadyExists(f"an image named '{name}' exists; 'corral image rm {name}' first")
    info = inspect(file, shown)
    work = root / f".{name}.tmp-import"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        qemu_img.convert(file, work / "root.qcow2", src_format=info.format,
                         progress=partial(progress, "converting to qcow2") if progress else None)
        manifest = {"name": name, "arch": arch, "format": "qcow2", "disk": "root.qcow2",
                    "root_device": root_device, "agent": agent, "source": source_name or str(file),
                    "virtual_size": info.virtual_size,
                    "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (work / "image.json").write_text(json.dumps(manifest, indent=2))
        work.rename(dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if progress:
        progress("done", 1.0)
    return dest
