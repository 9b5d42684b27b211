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
:func:`corral.host.runner.run`.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import struct
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

from corral.errors import CommandFailed, CorralError
from corral.host.runner import run

Progress = Callable[[str, float], None]

BASE_CMDLINE = ("console=ttyS0 quiet panic=-1 cryptomgr.notests i8042.noaux i8042.nomux "
                "i8042.nopnp i8042.dumbkbd no_timer_check")
KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
AGENT_PACKAGE = "qemu-guest-agent"
BUSYBOX_PACKAGE = "busybox-static"
#: Libraries of qemu-ga's libraries (libglib needs libpcre2); apt-cache adds the direct ones.
LIB_PACKAGES = ("libc6", "libglib2.0-0", "libpcre2-8-0", "liburing2", "libnuma1", "libudev1")
#: Kernel modules wanted in the guest; their dependencies come along. Built-in ones are skipped.
MODULES = ("virtio_pci", "virtio_mmio", "virtio_net", "virtio_blk", "virtio_console",
           "virtio_rng", "vmw_vsock_virtio_transport", "virtiofs", "button", "evdev")
#: Where a library's soname is looked for inside the unpacked packages, in ld.so's order.
LIB_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "lib", "usr/lib")
INTERP = "lib64/ld-linux-x86-64.so.2"
GUEST_LIBDIR = "lib/x86_64-linux-gnu"
#: Files of ``guest/`` and where they go in the initramfs (all executable).
GUEST_FILES = {"init": "init", "default.script": "usr/share/udhcpc/default.script",
               "shutdown": "sbin/shutdown", "power-button": "etc/acpi/PWRF/00000080"}
ETC_FILES = {"etc/passwd": "root:x:0:0:root:/root:/bin/sh\n", "etc/group": "root:x:0:\n",
             "etc/hosts": "127.0.0.1\tlocalhost\n", "etc/resolv.conf": "",
             "etc/profile": "export PS1='\\h:\\w\\$ '\n"}
HOST_TOOLS = ("apt-get", "apt-cache", "dpkg-deb", "cpio", "lz4")
LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"
_DEPENDS_RE = re.compile(rb"(?:^|\0)depends=([^\0]*)\0")
_APT_DEP_RE = re.compile(r"\s+\|?(?:Pre)?Depends:\s*([^\s<]\S*)")  # <virtual>: no .deb


class ImageBuildError(CorralError):
    """Building a guest image failed; the message says what to do about it."""

    kind = "image_build_failed"


# --- pure helpers --------------------------------------------------------------------------

def parse_apt_depends(text: str) -> dict[str, list[str]]:
    """``apt-cache depends A B`` output -> ``{package: [Depends and PreDepends, in order]}``."""
    deps: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line and not line[0].isspace():
            current = deps.setdefault(line.strip(), [])
        elif current is not None and (m := _APT_DEP_RE.match(line)):
            current.append(m.group(1))
    return deps


def deb_name_version(filename: str) -> tuple[str, str]:
    """``qemu-guest-agent_1%3a7.2+dfsg-7_amd64.deb`` -> ``("qemu-guest-agent", "1:7.2+dfsg-7")``."""
    parts = unquote(filename.removesuffix(".deb")).split("_")
    if len(parts) != 3:
        raise ImageBuildError(f"unexpected .deb file name {filename!r}")
    return parts[0], parts[1]


def module_name(name: str) -> str:
    """Canonical module name: ``kernel/drivers/char/hw_random/virtio-rng.ko`` -> ``virtio_rng``."""
    return PurePosixPath(name).name.removesuffix(".ko").replace("-", "_")


def modinfo_depends(ko: bytes) -> list[str]:
    """The ``depends=`` list of a ``.ko`` file's ``.modinfo`` section (empty when it has none)."""
    m = _DEPENDS_RE.search(ko)
    return [module_name(d) for d in m.group(1).decode().split(",") if d] if m else []


def module_closure(wanted: Iterable[str], depends: Callable[[str], Sequence[str]]) -> list[str]:
    """``wanted`` and everything they depend on, each module after its dependencies.

    A depth-first post-order walk; a dependency cycle raises :class:`ImageBuildError`.
    """
    order: list[str] = []
    done: set[str] = set()
    path: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        if name in path:
            raise ImageBuildError("kernel module dependency cycle: "
                                  + " -> ".join([*path[path.index(name):], name]))
        path.append(name)
        for dep in depends(name):
            visit(module_name(dep))
        path.pop()
        done.add(name)
        order.append(name)

    for name in wanted:
        visit(module_name(name))
    return order


def elf_needed(data: bytes) -> list[str]:
    """The ``DT_NEEDED`` sonames of a 64-bit little-endian ELF file, via its section headers."""
    if data[:4] != b"\x7fELF" or data[4:6] != b"\x02\x01":
        raise ImageBuildError("not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    # Elf64_Shdr: name type flags addr offset size link info addralign entsize
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
                for i in range(shnum)]
    needed: list[str] = []
    for _, sh_type, _, _, offset, size, link, *_ in sections:
        if sh_type != 6:                                   # SHT_DYNAMIC
            continue
        strtab = sections[link][4]
        for pos in range(offset, offset + size, 16):       # Elf64_Dyn: d_tag, d_val
            tag, val = struct.unpack_from("<qQ", data, pos)
            if tag == 0:                                   # DT_NULL
                break
            if tag == 1:                                   # DT_NEEDED
                start = strtab + val
                needed.append(data[start:data.index(b"\0", start)].decode())
    return needed


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


def resolve_in(tree: Path, rel: str) -> Path | None:
    """The regular file that ``rel`` names inside ``tree``, following symlinks *inside* it.

    Packages hold absolute symlinks (``/lib64/ld-linux-x86-64.so.2`` -> ``/lib/...``); the
    operating system would resolve them against the host's ``/``, which must not happen here.
    """
    for _ in range(40):
        if rel.startswith(".."):
            return None
        path = tree / rel
        if not path.is_symlink():
            return path if path.is_file() else None
        target = os.readlink(path)
        rel = (target.lstrip("/") if target.startswith("/")
               else os.path.normpath(os.path.join(os.path.dirname(rel), target)))
    return None


# --- build steps ---------------------------------------------------------------------------

class _Apt:
    """Runs apt commands; on failure runs ``apt-get update`` once when root, else explains."""

    def __init__(self) -> None:
        self.updated = False

    def __call__(self, argv: Sequence[str | Path], what: str, cwd: Path | None = None) -> str:
        try:
            return run(argv, what=what, cwd=cwd).stdout
        except CommandFailed as err:
            if self.updated or os.geteuid() != 0:
                raise ImageBuildError(f"{err.message} -- are the apt package lists empty or "
                                      "stale? Run 'apt-get update' as root") from err
        run(["apt-get", "update"], what="apt-get update")
        self.updated = True
        return self(argv, what, cwd)


def _download(debs: Path, apt: _Apt) -> list[Path]:
    deps = parse_apt_depends(apt(["apt-cache", "depends", KERNEL_METAPACKAGE, AGENT_PACKAGE],
                                 "apt-cache depends"))
    kernel = next((d for d in deps.get(KERNEL_METAPACKAGE, []) if d.startswith("linux-image-")),
                  None)
    if kernel is None:
        raise ImageBuildError(f"apt knows no kernel package behind {KERNEL_METAPACKAGE}; "
                              "run 'apt-get update' as root")
    libs = {d for d in deps.get(AGENT_PACKAGE, []) if d.startswith("lib")} | set(LIB_PACKAGES)
    sandbox = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []
    apt(["apt-get", "download", *sandbox, kernel, AGENT_PACKAGE, BUSYBOX_PACKAGE, *sorted(libs)],
        "apt-get download", cwd=debs)
    return sorted(debs.glob("*.deb"))


def _install_modules(tree: Path, root: Path, kver: str, busybox: Path) -> list[str]:
    src = tree / "lib/modules" / kver
    index = {module_name(p.name): p for p in (src / "kernel").rglob("*.ko")}
    builtin = {module_name(line) for line in (src / "modules.builtin").read_text().split()}
    wanted = [m for m in MODULES if module_name(m) not in builtin]

    def depends(name: str) -> list[str]:
        if name not in index:
            raise ImageBuildError(f"kernel {kver} has no module {name}")
        return modinfo_depends(index[name].read_bytes())

    order = module_closure(wanted, depends)
    dst = root / "lib/modules" / kver
    for name in order:
        target = dst / index[name].relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(index[name], target)       # not stripped: they are signed
    shutil.copyfile(src / "modules.builtin", dst / "modules.builtin")
    run([busybox, "depmod", "-b", root, kver], what="busybox depmod")
    return order


def _install_agent(tree: Path, root: Path) -> None:
    qga = tree / "usr/sbin/qemu-ga"
    (root / "usr/sbin").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(qga, root / "usr/sbin/qemu-ga")
    (root / "usr/sbin/qemu-ga").chmod(0o755)
    libdir = root / GUEST_LIBDIR
    libdir.mkdir(parents=True, exist_ok=True)
    interp = resolve_in(tree, INTERP)
    if interp is None:
        raise ImageBuildError(f"no package provided the dynamic loader /{INTERP}")
    todo, seen = [interp.name, *elf_needed(qga.read_bytes())], set[str]()
    while todo:
        soname = todo.pop()
        if soname in seen:
            continue
        seen.add(soname)
        found = next(filter(None, (resolve_in(tree, f"{d}/{soname}") for d in LIB_DIRS)), None)
        if found is None:
            raise ImageBuildError(f"qemu-ga needs {soname}, which no downloaded package "
                                  "provides; add its Debian package to LIB_PACKAGES")
        shutil.copyfile(found, libdir / soname)
        (libdir / soname).chmod(0o755)
        todo.extend(elf_needed(found.read_bytes()))
    (root / "lib64").mkdir(exist_ok=True)
    (root / INTERP).symlink_to(f"/{GUEST_LIBDIR}/{interp.name}")
    if platform.machine() == "x86_64":     # smoke test: the agent runs on the guest's libraries
        run([libdir / interp.name, "--library-path", libdir, root / "usr/sbin/qemu-ga",
             "--version"], what="qemu-ga --version with the guest's libraries")


def _install_base(tree: Path, root: Path) -> Path:
    """busybox and its applet links, the guest scripts, /etc and the empty mount points."""
    busybox = root / "bin/busybox"
    busybox.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tree / "bin/busybox", busybox)
    busybox.chmod(0o755)
    for applet in run([busybox, "--list-full"], what="busybox --list-full").stdout.split():
        link = root / applet
        if applet != "linuxrc" and not link.is_symlink() and not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")
    guest = resources.files("corral.images") / "guest"
    for name, rel in GUEST_FILES.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((guest / name).read_bytes())
        target.chmod(0o755)
    for rel, text in ETC_FILES.items():
        (root / rel).write_text(text)
    for rel in ("proc", "sys", "dev", "run", "tmp", "root", "mnt", "var/lib", "var/log"):
        (root / rel).mkdir(parents=True, exist_ok=True)
    (root / "var/run").symlink_to("/run")
    (root / "tmp").chmod(0o1777)
    (root / "root").chmod(0o700)
    root.chmod(0o755)
    return busybox


def _write_cpio(root: Path, out: Path) -> None:
    names = ["."]
    for top, dirs, files in os.walk(root):
        rel = os.path.relpath(top, root)
        names += [os.path.normpath(os.path.join(rel, n)) for n in dirs + files]
    run(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0", "-O", out], cwd=root,
        input="\n".join(sorted(names)) + "\n", what="cpio")


def _extract_vmlinux(bzimage: Path, out: Path, scratch: Path) -> None:
    stream, size = bzimage_payload(bzimage.read_bytes())
    (scratch / "vmlinux.lz4").write_bytes(stream)
    run(["lz4", "-d", "-f", "-q", scratch / "vmlinux.lz4", out], what="lz4 -d (kernel)")
    with out.open("rb") as f:
        if f.read(4) != b"\x7fELF" or out.stat().st_size != size:
            raise ImageBuildError(f"{bzimage.name} did not decompress to an ELF of {size} bytes")


def _build(out: Path, report: Progress) -> None:
    work = out / "work"
    debs, tree, root = work / "debs", work / "tree", work / "root"
    for d in (debs, tree, root):
        d.mkdir(parents=True)
    missing = [t for t in HOST_TOOLS if not shutil.which(t)]
    if missing:
        raise ImageBuildError(f"missing host tools: {' '.join(missing)} "
                              "(apt-get install cpio lz4)")
    report("resolving and downloading Debian packages", 0.0)
    files = _download(debs, _Apt())
    packages: dict[str, str] = {}
    for i, deb in enumerate(files):
        name, version = deb_name_version(deb.name)
        packages[name] = version
        report(f"extracting {name}", 0.2 + 0.4 * i / len(files))
        run(["dpkg-deb", "-x", deb, tree], what=f"dpkg-deb -x {deb.name}")
    kvers = [p.name for p in (tree / "lib/modules").iterdir()]
    if len(kvers) != 1:
        raise ImageBuildError(f"expected one kernel in the packages, found {kvers}")
    kver = kvers[0]
    report("installing busybox and the guest scripts", 0.6)
    busybox = _install_base(tree, root)
    report("collecting kernel modules", 0.62)
    _install_modules(tree, root, kver, busybox)
    report("installing qemu-ga and its libraries", 0.65)
    _install_agent(tree, root)
    report("writing the cpio archive", 0.68)
    _write_cpio(root, work / "initrd.cpio")
    report("compressing the initrd (lz4 -l)", 0.72)
    run(["lz4", "-l", "-9", "-f", "-q", work / "initrd.cpio", out / "initrd.lz4"],
        what="lz4 (initrd)")
    report("extracting vmlinux from the bzImage", 0.85)
    _extract_vmlinux(tree / "boot" / f"vmlinuz-{kver}", out / "vmlinux", work)
    report("writing image.json", 0.97)
    meta = {"name": "tiny", "arch": "x86_64", "format": "kernel+initrd", "kernel": "vmlinux",
            "initrd": "initrd.lz4", "cmdline": BASE_CMDLINE, "agent": True,
            "packages": dict(sorted(packages.items())),
            "built_at": datetime.now(UTC).isoformat(timespec="seconds")}
    shutil.rmtree(work)
    (out / "image.json").write_text(json.dumps(meta, indent=2) + "\n")


def build_tiny(dest: Path, *, force: bool = False,
               progress: Callable[[str, float], None] | None = None) -> Path:
    """Build the tiny image into ``dest`` and return ``dest``.

    Idempotent: when ``dest/image.json`` exists and ``force`` is false, nothing is done. The
    image is built in ``.<name>.tmp-<pid>`` beside ``dest`` and renamed into place at the end,
    so ``dest`` is either complete or absent; the temporary directory is removed on failure.

    :param progress: called as ``progress(step, fraction_done)`` while the build moves on.
    :raises ImageBuildError: or another :class:`CorralError` with a one-line message.
    """
    dest = Path(dest).absolute()  # the build changes directories; relative paths would break
    if (dest / "image.json").exists() and not force:
        return dest
    report: Progress = progress or (lambda _step, _fraction: None)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    old = dest.parent / f".{dest.name}.old-{os.getpid()}"
    for stale in (tmp, old):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        tmp.mkdir()
        _build(tmp, report)
        if dest.exists() or dest.is_symlink():
            dest.rename(old)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not dest.exists():
            old.rename(dest)
        raise
    shutil.rmtree(old, ignore_errors=True)
    report("done", 1.0)
    return dest
