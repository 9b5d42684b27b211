"""Build Corral's "tiny" guest: a Debian cloud kernel booted straight into a busybox initramfs.

The image is a directory (e.g. ``$CORRAL_HOME/images/tiny``) with three files:

``vmlinux``
    The kernel as an uncompressed ELF. QEMU boots an ELF ``-kernel`` through its PVH entry
    point (``CONFIG_PVH=y``) on q35 and microvm alike, so the guest does not spend ~0.2 s of TCG
    time decompressing a 14 MB bzImage. It is cut out of Debian's bzImage: the setup header's
    ``payload_offset``/``payload_length`` locate an lz4 *legacy* stream whose last four bytes
    are the uncompressed size (see :func:`bzimage_payload`), and ``lz4 -d`` inflates it.
``initrd.lz4``
    A newc cpio, every file owned by root (``-R 0:0``), compressed with ``lz4 -l``: the
    kernel's unlz4 only reads the legacy frame format. lz4 inflates fastest at boot.
``image.json``
    Names of those files, the base kernel command line and the Debian package versions.

How the initramfs is put together (:func:`build_tiny`):

1. ``apt-cache depends`` resolves the metapackage ``linux-image-cloud-amd64`` to the real
   kernel package and lists qemu-guest-agent's library dependencies; ``apt-get download``
   fetches them with busybox-static and :data:`LIB_PACKAGES`; ``dpkg-deb -x`` unpacks all of
   them into one scratch tree. Nothing is copied from the host, so the image does not depend
   on what the host happens to have installed.
2. Kernel modules. The virtio drivers are modules (``=m``) in this kernel, and the .deb has no
   ``modules.dep`` (its postinst would make it). Each ``.ko``'s ``.modinfo`` section holds a
   ``depends=a,b`` string; :func:`module_closure` orders the closure of :data:`MODULES`
   dependencies-first, only those are copied, and ``busybox depmod`` writes modules.dep and
   modules.alias for the guest's ``busybox modprobe``. The ACPI button driver and evdev are
   modules too: with them busybox ``acpid`` sees the power button as ``/dev/input/event*``,
   so QMP ``system_powerdown`` powers the guest off cleanly.
3. ``/usr/sbin/qemu-ga`` plus every shared library reachable through ELF ``DT_NEEDED``
   entries (:func:`elf_needed`) goes to ``/lib/x86_64-linux-gnu``, which Debian's ld.so
   searches without an ``ld.so.cache``. A library that no downloaded package provides aborts
   the build rather than producing a guest whose agent cannot start; so does a failing
   ``qemu-ga --version`` run through the guest's own loader and libraries.
4. busybox with one symlink per applet, the scripts of ``guest/`` next to this module (``/init``,
   udhcpc's ``default.script``, the ``/sbin/shutdown`` shim that qemu-ga's guest-shutdown runs,
   the power-button action) and a few ``/etc`` files.

Apt package lists: when ``apt-get download`` or ``apt-cache`` fails (empty or stale lists on a
fresh host) and we run as root, we run ``apt-get update`` once and try again; otherwise the
build stops with an error that says to run ``apt-get update`` as root.

Host tools needed: apt-get, apt-cache, dpkg-deb, cpio, lz4. Every command goes through
:func:`corral.host.runner.run`. The steps shared with the arm64 image live in
:mod:`corral.images._build`; what is x86-only (the bzImage -> vmlinux cut) stays here.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from corral.host import qemu_img
from corral.host.runner import run
from corral.images._build import (
    ETC_FILES,
    GUEST_FILES,
    LIB_PACKAGES,
    X86_64,
    Apt,
    ImageBuildError,
    Progress,
    build_atomically,
    busybox_applets,
    check_host_tools,
    deb_name_version,
    download_guest_packages,
    elf_needed,
    extract_debs,
    install_agent,
    install_base,
    install_modules,
    kernel_version,
    modinfo_depends,
    module_closure,
    module_name,
    parse_apt_depends,
    remove_tree,
    resolve_in,
    write_initrd,
)

__all__ = [
    "ETC_FILES", "GUEST_FILES", "LIB_PACKAGES", "ImageBuildError", "Progress", "build_tiny",
    "bzimage_payload", "deb_name_version", "elf_needed", "modinfo_depends", "module_closure",
    "module_name", "parse_apt_depends", "resolve_in",
]

BASE_CMDLINE = ("console=ttyS0 quiet panic=-1 cryptomgr.notests i8042.noaux i8042.nomux "
                "i8042.nopnp i8042.dumbkbd no_timer_check")
KERNEL_METAPACKAGE = X86_64.kernel_metapackage
#: Kernel modules wanted in the guest; their dependencies come along. Built-in ones are skipped.
MODULES = ("virtio_pci", "virtio_mmio", "virtio_net", "virtio_blk", "virtio_console",
           "virtio_rng", "vmw_vsock_virtio_transport", "virtiofs", "button", "evdev")
HOST_TOOLS = ("apt-get", "apt-cache", "dpkg-deb", "cpio", "lz4")
LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"


# --- x86-only: the bzImage ---------------------------------------------------------------

def bzimage_payload(image: bytes) -> tuple[bytes, int]:
    """The lz4 legacy stream of a bzImage's compressed kernel, and the uncompressed size.

    The x86 boot protocol (>= 2.08) header says where the payload is: ``payload_offset`` at
    0x248 counts from the protected-mode code, which starts after ``(setup_sects + 1) * 512``
    bytes. The kernel build appends the uncompressed size (4 bytes, little-endian) to the
    stream; ``lz4 -d`` would call those bytes undecodable and fail, so they are cut off.
    """
    if image[0x202:0x206] != b"HdrS":
        raise ImageBuildError("the kernel is not a bzImage (no HdrS setup header)")
    if struct.unpack_from("<H", image, 0x206)[0] < 0x208:
        raise ImageBuildError("the bzImage boot protocol is older than 2.08 (no payload field)")
    setup_sects = image[0x1F1] or 4
    offset, length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sects + 1) * 512 + offset
    payload = image[start:start + length]
    if length < 8 or len(payload) != length:
        raise ImageBuildError("the bzImage payload lies outside the file")
    if payload[:4] != LZ4_LEGACY_MAGIC:
        raise ImageBuildError(f"the kernel payload is not lz4 (magic {payload[:4].hex()}); "
                              "only lz4-compressed kernels are supported")
    return payload[:-4], struct.unpack_from("<I", payload, length - 4)[0]


def _extract_vmlinux(bzimage: Path, out: Path, scratch: Path) -> None:
    stream, size = bzimage_payload(bzimage.read_bytes())
    (scratch / "vmlinux.lz4").write_bytes(stream)
    run(["lz4", "-d", "-f", "-q", scratch / "vmlinux.lz4", out], what="lz4 -d (kernel)")
    with out.open("rb") as f:
        if f.read(4) != b"\x7fELF" or out.stat().st_size != size:
            raise ImageBuildError(f"{bzimage.name} did not decompress to an ELF of {size} bytes")


class _Apt(Apt):
    """The host's apt, run through this module's ``run`` (looked up per call: tests swap it)."""

    def __init__(self) -> None:
        super().__init__(runner=lambda argv, **kw: run(argv, **kw))


def _build(out: Path, report: Progress) -> None:
    work = out / "work"
    debs, tree, root = work / "debs", work / "tree", work / "root"
    for d in (debs, tree, root):
        d.mkdir(parents=True)
    check_host_tools(HOST_TOOLS, "apt-get install cpio lz4")
    report("resolving and downloading Debian packages", 0.0)
    files = download_guest_packages(_Apt(), debs, X86_64)
    packages = extract_debs(files, tree, report, (0.2, 0.6))
    kver = kernel_version(tree)
    report("installing busybox and the guest scripts", 0.6)
    busybox = tree / "bin/busybox"
    install_base(root, busybox, busybox_applets(busybox))
    report("collecting kernel modules", 0.62)
    install_modules(tree, root, kver, MODULES, root / "bin/busybox")
    report("installing qemu-ga and its libraries", 0.65)
    install_agent(tree, root, X86_64)
    report("writing the initrd (cpio, lz4 -l)", 0.68)
    write_initrd(root, work, out / "initrd.lz4")
    report("writing the ext4 root disk", 0.78)
    _write_root_disk(root, work, out / "root.qcow2")
    report("extracting vmlinux from the bzImage", 0.85)
    _extract_vmlinux(tree / "boot" / f"vmlinuz-{kver}", out / "vmlinux", work)
    report("writing image.json", 0.97)
    meta = {"name": "tiny", "arch": "x86_64", "format": "kernel+initrd", "kernel": "vmlinux",
            "initrd": "initrd.lz4", "cmdline": BASE_CMDLINE, "agent": True,
            "packages": dict(sorted(packages.items())),
            "built_at": datetime.now(UTC).isoformat(timespec="seconds")}
    remove_tree(work)
    (out / "image.json").write_text(json.dumps(meta, indent=2) + "\n")


def _write_root_disk(root: Path, work: Path, target: Path) -> None:
    """The same root tree as an ext4 file system (with a journal: it is written to) in a
    qcow2, for ``tiny-disk``. ``-d`` fills it without mounting anything."""
    raw = work / "root.ext4"
    run(["mkfs.ext4", "-q", "-F", "-L", "tinyroot", "-d", str(root), "-E", "root_owner=0:0",
         "-m", "0", str(raw), "256M"], what="mkfs.ext4 could not make the root disk")
    qemu_img.convert(raw, target, src_format="raw",
                     what="qemu-img could not convert the root disk")
    raw.unlink()


def _write_disk_variant(tiny: Path) -> None:
    """``tiny-disk`` beside ``tiny``: the same kernel booting the ext4 root on NVMe (built
    into the kernel, so no initrd is needed), so files written in the guest survive a
    reboot. New VMs get an overlay of the disk."""
    disk = tiny.parent / "tiny-disk"
    disk.mkdir(exist_ok=True)
    meta = json.loads((tiny / "image.json").read_text())
    meta.update({"name": "tiny-disk", "format": "kernel+disk", "kernel": "../tiny/vmlinux",
                 "disk": "../tiny/root.qcow2", "root_device": "nvme",
                 "cmdline": BASE_CMDLINE + " root=/dev/nvme0n1 rw rootfstype=ext4 init=/init"})
    meta.pop("initrd", None)
    tmp = disk / "image.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    tmp.rename(disk / "image.json")


def build_tiny(dest: Path, *, force: bool = False,
               progress: Callable[[str, float], None] | None = None) -> Path:
    """Build the tiny image into ``dest`` and return ``dest``.

    Idempotent: when ``dest/image.json`` exists and ``force`` is false, nothing is done. The
    image is built in ``.<name>.tmp-<pid>`` beside ``dest`` and renamed into place at the end,
    so ``dest`` is either complete or absent; the temporary directory is removed on failure.

    :param progress: called as ``progress(step, fraction_done)`` while the build moves on.
    :raises ImageBuildError: or another :class:`CorralError` with a one-line message.
    """
    built = build_atomically(dest, force, progress, lambda out, report: _build(out, report))
    _write_disk_variant(built)
    return built
