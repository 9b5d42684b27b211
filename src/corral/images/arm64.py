"""Build Corral's "tiny-arm64" guest: Debian's arm64 cloud kernel and a busybox initramfs.

The same guest as :mod:`corral.images.tiny` (the same ``/init``, the same qemu-guest-agent
over virtio-serial, udhcpc on ``eth0``) for ``qemu-system-aarch64 -machine virt`` under TCG.
The image directory holds:

``Image``
    ``boot/vmlinuz-*`` of ``linux-image-cloud-arm64``. On arm64 that file already *is* the
    uncompressed ``Image`` (PE/COFF ``MZ`` stub, magic ``ARM\\x64`` at 0x38), so unlike the x86
    bzImage there is nothing to cut out. QEMU boots it straight from ``-kernel`` with its
    built-in boot stub and a generated device tree: no UEFI firmware is needed (UEFI would add
    ~0.8 s and ~95 MB of RSS). The kernel then sees DT, not ACPI.
``initrd.lz4``
    busybox-static, qemu-ga with its libraries, the virtio modules and ``guest/``'s scripts.
``image.json``
    ``"arch": "aarch64"``, ``"machine": "virt"``, ``"cpu": "cortex-a57"`` and the command line.

Where the arm64 packages come from: a **private apt state** (lists and cache in the build's
work directory, ``APT::Architecture=arm64``) that reads the host's sources and keyring. The host's
dpkg configuration is never changed: no ``dpkg --add-architecture``, and ``/var/lib/apt/lists``
is untouched. This works without root too.

Two host-side tasks need a busybox that runs *on the host*: listing the applets to link
(``busybox --list-full``) and ``busybox depmod`` (it reads arm64 ``.ko`` files fine). The arm64
busybox cannot run here, so the host's own-architecture ``busybox-static`` is downloaded too,
through the host's apt lists; the applet list of the same Debian release is identical.

What differs from x86 in the guest (facts, measured with QEMU 7.2 and kernel 6.1):

- ``-cpu cortex-a57``, never ``-cpu max``: ``max`` enables pointer authentication with the
  architected QARMA5 algorithm, which TCG emulates slowly, and this kernel signs every return
  address. Boot to the agent takes ~1.5 s with cortex-a57 and ~7.5 s with max.
  ``neoverse-n1`` is the choice when guest software needs ARMv8.2.
- The console is the PL011 ``ttyAMA0``; ``tsc_early_khz`` and ``i8042.*`` mean nothing here.
- virtio-pci (the virt machine's generic ECAM host bridge is built in) and virtio-mmio (32 slots
  in the DT) both work; the drivers are modules, loaded by ``/init``. ``virtio-net-pci`` wants
  the ``efi-virtio.rom`` option ROM from ``ipxe-qemu``: pass ``romfile=`` (empty) so that
  ``qemu-system-arm`` installed without recommends starts.
- No ACPI power button: without firmware the guest uses DT, and this kernel has no
  ``gpio-keys`` driver (``CONFIG_KEYBOARD_GPIO`` unset), so QMP ``system_powerdown`` does
  nothing. Shut the guest down through the agent (``guest-shutdown``) or quit QEMU.
- ``-smp 1`` is the fast default on a small host: each vCPU is a host thread under MTTCG.

Host tools: apt-get, apt-cache, dpkg-deb, cpio, lz4; ``qemu-system-aarch64`` (Debian package
``qemu-system-arm``) only to boot it.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from corral.images._build import (
    AARCH64,
    BUSYBOX_PACKAGE,
    Apt,
    ImageBuildError,
    Progress,
    build_atomically,
    busybox_applets,
    check_host_tools,
    deb_name_version,
    download_guest_packages,
    extract_debs,
    install_agent,
    install_base,
    install_modules,
    kernel_version,
    remove_tree,
    sandbox_options,
    write_initrd,
)
from corral.images.tiny import MODULES

NAME = "tiny-arm64"
MACHINE = "virt"
CPU = "cortex-a57"
CMDLINE = "console=ttyAMA0 quiet panic=-1 cryptomgr.notests"
HOST_TOOLS = ("apt-get", "apt-cache", "dpkg-deb", "cpio", "lz4")
#: Options that every aarch64 virtio-net-pci device needs (no iPXE option ROM).
NIC_OPTIONS = {"romfile": ""}
IMAGE_MAGIC_OFFSET = 0x38
IMAGE_MAGIC = b"ARM\x64"


class MachineSpec(Protocol):
    """What :func:`arm64_machine_args` reads; :class:`corral.domain.specs.VMSpec` fits."""

    @property
    def memory_bytes(self) -> int: ...
    @property
    def cpus(self) -> int: ...
    @property
    def cpu_model(self) -> str: ...
    @property
    def kernel(self) -> str: ...
    @property
    def initrd(self) -> str | None: ...
    @property
    def cmdline(self) -> str: ...


def arm64_machine_args(spec: MachineSpec) -> list[str]:
    """The machine part of a ``qemu-system-aarch64`` argv: machine, accelerator, CPU, memory
    and a firmware-less direct kernel boot. Devices (``virtio-*-pci``, with
    :data:`NIC_OPTIONS` on the NIC), chardevs and QMP are the same as on q35.

    A ``max`` CPU is replaced by ``cortex-a57``: its pointer authentication makes TCG 5x slower.
    """
    cpu = spec.cpu_model if spec.cpu_model and spec.cpu_model != "max" else CPU
    argv = ["-machine", MACHINE, "-accel", "tcg", "-cpu", cpu,
            "-m", f"{spec.memory_bytes >> 20}M", "-smp", str(spec.cpus),
            "-kernel", spec.kernel]
    if spec.initrd:
        argv += ["-initrd", spec.initrd]
    return [*argv, "-append", spec.cmdline]


def check_arm64_image(head: bytes) -> None:
    """Refuse anything but an uncompressed arm64 ``Image`` (its header's magic at 0x38)."""
    if head[IMAGE_MAGIC_OFFSET:IMAGE_MAGIC_OFFSET + 4] != IMAGE_MAGIC:
        raise ImageBuildError("the arm64 kernel is not an uncompressed Image "
                              "(no ARM\\x64 magic at 0x38)")


def private_apt_options(state: Path, deb_arch: str) -> list[str]:
    """apt options for package lists and cache under ``state``, for ``deb_arch`` only."""
    (state / "lists/partial").mkdir(parents=True, exist_ok=True)
    (state / "cache/archives/partial").mkdir(parents=True, exist_ok=True)
    return ["-o", f"Dir::State::Lists={state / 'lists'}", "-o", f"Dir::Cache={state / 'cache'}",
            "-o", f"APT::Architecture={deb_arch}", "-o", f"APT::Architectures={deb_arch}",
            *sandbox_options()]


def _host_busybox(work: Path) -> tuple[Path, str]:
    """The host architecture's busybox-static, unpacked under ``work``; and its version."""
    debs, tree = work / "host-debs", work / "host-tree"
    debs.mkdir()
    tree.mkdir()
    Apt()(["apt-get", "download", *sandbox_options(), BUSYBOX_PACKAGE],
          "apt-get download busybox-static (host)", cwd=debs)
    deb = next(debs.glob("*.deb"))
    extract_debs([deb], tree, lambda _s, _f: None, (0.0, 0.0))
    return tree / "bin/busybox", deb_name_version(deb.name)[1]


def _build(out: Path, report: Progress) -> None:
    work = out / "work"
    debs, tree, root = work / "debs", work / "tree", work / "root"
    for d in (debs, tree, root):
        d.mkdir(parents=True)
    check_host_tools(HOST_TOOLS, "apt-get install cpio lz4")
    report("fetching arm64 package lists (private apt state)", 0.0)
    apt = Apt(private_apt_options(work / "apt", AARCH64.deb),
              hint="is the Debian mirror in the host's apt sources reachable?")
    apt.update()
    report("downloading arm64 packages", 0.1)
    files = download_guest_packages(apt, debs, AARCH64)
    report("downloading the host's busybox (applet list, depmod)", 0.3)
    host_busybox, host_busybox_version = _host_busybox(work)
    packages = extract_debs(files, tree, report, (0.35, 0.7))
    kver = kernel_version(tree)
    report("installing busybox and the guest scripts", 0.7)
    install_base(root, tree / "bin/busybox", busybox_applets(host_busybox))
    report("collecting kernel modules", 0.72)
    install_modules(tree, root, kver, MODULES, host_busybox)
    report("installing qemu-ga and its libraries", 0.75)
    install_agent(tree, root, AARCH64)
    report("writing the initrd (cpio, lz4 -l)", 0.8)
    write_initrd(root, work, out / "initrd.lz4")
    report("copying the kernel Image", 0.95)
    kernel = tree / "boot" / f"vmlinuz-{kver}"
    with kernel.open("rb") as f:
        check_arm64_image(f.read(64))
    shutil.copyfile(kernel, out / "Image")
    meta = {"name": NAME, "arch": AARCH64.name, "machine": MACHINE, "cpu": CPU,
            "format": "kernel+initrd", "kernel": "Image", "initrd": "initrd.lz4",
            "cmdline": CMDLINE, "agent": True, "kernel_version": kver,
            "packages": dict(sorted(packages.items())),
            "host_busybox": host_busybox_version,
            "built_at": datetime.now(UTC).isoformat(timespec="seconds")}
    remove_tree(work)
    (out / "image.json").write_text(json.dumps(meta, indent=2) + "\n")


def build_tiny_arm64(dest: Path, *, force: bool = False,
                     progress: Progress | None = None) -> Path:
    """Build the tiny-arm64 image into ``dest`` and return ``dest``.

    The same contract as :func:`corral.images.tiny.build_tiny`: idempotent unless ``force``,
    built beside ``dest`` and renamed into place, so ``dest`` is complete or absent.
    Needs no root: the arm64 package lists live in the build's own directory (the host's
    busybox-static comes through the host's lists, which root refreshes once when stale).

    :param progress: called as ``progress(step, fraction_done)`` while the build moves on.
    :raises ImageBuildError: or another :class:`CorralError` with a one-line message.
    """
    return build_atomically(dest, force, progress, _build)
