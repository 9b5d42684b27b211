"""Pieces shared by Corral's image builders (``tiny``, ``tiny-arm64``, ``debian``).

A guest image is a directory with ``image.json`` (see :mod:`corral.images.catalog`). Builders
never write into that directory while they work: :func:`build_atomically` builds into a
temporary sibling and renames it into place, so an image is either complete or absent.

The busybox initramfs builders (:mod:`corral.images.tiny`, :mod:`corral.images.arm64`) all do
the same four things, for whichever guest architecture :class:`GuestArch` describes:

1. fetch Debian packages with :class:`Apt` (:func:`download_guest_packages` resolves the kernel
   metapackage and qemu-guest-agent's libraries) and unpack them with ``dpkg-deb -x``;
2. copy a closure of kernel modules (:func:`install_modules`): the kernel .deb has no
   ``modules.dep``, so each ``.ko``'s ``.modinfo`` ``depends=`` string is read here and
   ``busybox depmod`` writes the index. It must be a busybox the *host* can run; busybox depmod
   parses foreign-architecture ``.ko`` files without trouble;
3. copy ``qemu-ga`` and every library its ELF ``DT_NEEDED`` entries reach
   (:func:`install_agent`); no ``ldd``, which cannot run a foreign binary anyway;
4. lay out busybox, its applet links, the scripts of ``guest/`` and ``/etc``
   (:func:`install_base`), then :func:`write_initrd` (newc cpio, ``lz4 -l``).

Everything is pure Python or goes through :func:`corral.host.runner.run`.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from corral.errors import CommandFailed
from corral.host.runner import Result, run
from corral.images._inspect import (
    ImageBuildError as ImageBuildError,
)
from corral.images._inspect import (
    apt_problems as apt_problems,
)
from corral.images._inspect import (
    deb_name_version as deb_name_version,
)
from corral.images._inspect import (
    elf_needed as elf_needed,
)
from corral.images._inspect import (
    modinfo_depends as modinfo_depends,
)
from corral.images._inspect import (
    module_closure as module_closure,
)
from corral.images._inspect import (
    module_name as module_name,
)
from corral.images._inspect import (
    parse_apt_depends as parse_apt_depends,
)
from corral.images._inspect import (
    resolve_in as resolve_in,
)

Progress = Callable[[str, float], None]
Runner = Callable[..., Result]

#: Libraries of qemu-ga's libraries (libglib needs libpcre2); apt-cache adds the direct ones.
LIB_PACKAGES = ("libc6", "libglib2.0-0", "libpcre2-8-0", "liburing2", "libnuma1", "libudev1")
AGENT_PACKAGE = "qemu-guest-agent"
BUSYBOX_PACKAGE = "busybox-static"
#: Files of ``guest/`` and where they go in the initramfs (all executable).
GUEST_FILES = {"init": "init", "default.script": "usr/share/udhcpc/default.script",
               "shutdown": "sbin/shutdown", "power-button": "etc/acpi/PWRF/00000080",
               "hotplug": "sbin/hotplug"}
ETC_FILES = {"etc/passwd": "root:x:0:0:root:/root:/bin/sh\n", "etc/group": "root:x:0:\n",
             "etc/hosts": "127.0.0.1\tlocalhost\n", "etc/resolv.conf": "",
             "etc/profile": "export PS1='\\h:\\w\\$ '\n",
             # mdev -d runs the NIC hook only; devtmpfs makes every device node
             "etc/mdev.conf": "SUBSYSTEM=net;eth[0-9]+ 0:0 600 ! */sbin/hotplug\n"
                              ".* 0:0 600 !\n"}


@dataclass(frozen=True)
class GuestArch:
    """What differs between guest architectures in a busybox + qemu-ga initramfs."""

    name: str                #: ``uname -m`` in the guest, and image.json's ``arch``
    deb: str                 #: Debian's name for it
    kernel_metapackage: str
    interp: str              #: PT_INTERP of the guest's binaries, without the leading ``/``

    @property
    def libdir(self) -> str:
        """Where the guest's libraries go; Debian's ld.so searches it without a cache."""
        return f"lib/{self.name}-linux-gnu"

    @property
    def lib_dirs(self) -> tuple[str, ...]:
        """Where a soname is looked for inside the unpacked packages, in ld.so's order."""
        return (self.libdir, f"usr/{self.libdir}", "lib64", "lib", "usr/lib")


X86_64 = GuestArch("x86_64", "amd64", "linux-image-cloud-amd64", "lib64/ld-linux-x86-64.so.2")
AARCH64 = GuestArch("aarch64", "arm64", "linux-image-cloud-arm64", "lib/ld-linux-aarch64.so.1")


# --- pure helpers --------------------------------------------------------------------------

class Apt:
    """Runs apt commands with extra ``-o`` ``options``.

    On failure it runs ``apt-get update`` once when root (empty or stale lists on a fresh
    host) and tries again; otherwise it stops with an error that ends with ``hint``.
    ``runner`` replaces :func:`corral.host.runner.run` (tests pass a fake).
    """

    def __init__(self, options: Sequence[str] = (), runner: Runner | None = None,
                 hint: str = "are the apt package lists empty or stale? "
                             "Run 'apt-get update' as root") -> None:
        self.options = list(options)
        self.updated = False
        self.hint = hint
        self._run: Runner = runner or run

    def _argv(self, argv: Sequence[str | Path]) -> list[str | Path]:
        return [argv[0], *self.options, *argv[1:]]

    def update(self) -> None:
        """``apt-get update``; a ``W:``/``E:`` line (an unreachable mirror) is a failure."""
        res = self._run(self._argv(["apt-get", "update"]), what="apt-get update")
        problems = apt_problems(f"{res.stdout}\n{res.stderr}")
        if problems:
            raise ImageBuildError(f"apt-get update: {problems[0]}")
        self.updated = True

    def __call__(self, argv: Sequence[str | Path], what: str, cwd: Path | None = None) -> str:
        try:
            return str(self._run(self._argv(argv), what=what, cwd=cwd).stdout)
        except CommandFailed as err:
            if self.updated or os.geteuid() != 0:
                raise ImageBuildError(f"{err.message} -- {self.hint}") from err
        self.update()
        return self(argv, what, cwd)


def sandbox_options() -> list[str]:
    """As root, apt downloads as ``_apt``, which cannot write a root-owned work directory."""
    return ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []


def download_guest_packages(apt: Apt, debs: Path, arch: GuestArch) -> list[Path]:
    """The real kernel package behind ``arch``'s metapackage, qemu-guest-agent, its libraries
    and busybox-static, downloaded into ``debs``."""
    meta = arch.kernel_metapackage
    deps = parse_apt_depends(apt(["apt-cache", "depends", meta, AGENT_PACKAGE],
                                 "apt-cache depends"))
    kernel = next((d for d in deps.get(meta, []) if d.startswith("linux-image-")), None)
    if kernel is None:
        raise ImageBuildError(f"apt knows no kernel package behind {meta}; "
                              "run 'apt-get update' as root")
    libs = {d for d in deps.get(AGENT_PACKAGE, []) if d.startswith("lib")} | set(LIB_PACKAGES)
    apt(["apt-get", "download", *sandbox_options(), kernel, AGENT_PACKAGE, BUSYBOX_PACKAGE,
         *sorted(libs)], "apt-get download", cwd=debs)
    return sorted(debs.glob("*.deb"))


def extract_debs(files: Sequence[Path], tree: Path, report: Progress,
                 span: tuple[float, float]) -> dict[str, str]:
    """``dpkg-deb -x`` each file into ``tree``; returns ``{package: version}``."""
    packages: dict[str, str] = {}
    lo, hi = span
    for i, deb in enumerate(files):
        name, version = deb_name_version(deb.name)
        packages[name] = version
        report(f"extracting {name}", lo + (hi - lo) * i / max(len(files), 1))
        run(["dpkg-deb", "-x", deb, tree], what=f"dpkg-deb -x {deb.name}")
    return packages


def kernel_version(tree: Path) -> str:
    """The one ``lib/modules/KVER`` directory the unpacked packages hold."""
    kvers = [p.name for p in (tree / "lib/modules").iterdir()]
    if len(kvers) != 1:
        raise ImageBuildError(f"expected one kernel in the packages, found {kvers}")
    return kvers[0]


# --- the initramfs -------------------------------------------------------------------------

def busybox_applets(busybox: Path) -> list[str]:
    """``busybox --list-full`` of a busybox the host can run."""
    return run([busybox, "--list-full"], what="busybox --list-full").stdout.split()


def install_modules(tree: Path, root: Path, kver: str, modules: Iterable[str],
                    depmod: Path) -> list[str]:
    """Copy ``modules`` and their dependencies (built-in ones skipped); ``depmod`` is a busybox
    the host can run. Returns the modules in load order."""
    src = tree / "lib/modules" / kver
    index = {module_name(p.name): p for p in (src / "kernel").rglob("*.ko")}
    builtin = {module_name(line) for line in (src / "modules.builtin").read_text().split()}
    wanted = [m for m in modules if module_name(m) not in builtin]

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
    run([depmod, "depmod", "-b", root, kver], what="busybox depmod")
    return order


def install_agent(tree: Path, root: Path, arch: GuestArch) -> None:
    """``/usr/sbin/qemu-ga``, its libraries (by ``DT_NEEDED``) and the dynamic loader."""
    qga = tree / "usr/sbin/qemu-ga"
    (root / "usr/sbin").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(qga, root / "usr/sbin/qemu-ga")
    (root / "usr/sbin/qemu-ga").chmod(0o755)
    libdir = root / arch.libdir
    libdir.mkdir(parents=True, exist_ok=True)
    interp = resolve_in(tree, arch.interp)
    if interp is None:
        raise ImageBuildError(f"no package provided the dynamic loader /{arch.interp}")
    todo, seen = [interp.name, *elf_needed(qga.read_bytes())], set[str]()
    while todo:
        soname = todo.pop()
        if soname in seen:
            continue
        seen.add(soname)
        found = next(filter(None, (resolve_in(tree, f"{d}/{soname}") for d in arch.lib_dirs)),
                     None)
        if found is None:
            raise ImageBuildError(f"qemu-ga needs {soname}, which no downloaded package "
                                  "provides; add its Debian package to LIB_PACKAGES")
        shutil.copyfile(found, libdir / soname)
        (libdir / soname).chmod(0o755)
        todo.extend(elf_needed(found.read_bytes()))
    (root / arch.interp).parent.mkdir(parents=True, exist_ok=True)
    (root / arch.interp).symlink_to(f"/{arch.libdir}/{interp.name}")
    if platform.machine() == arch.name:    # smoke test: the agent runs on the guest's libraries
        run([libdir / interp.name, "--library-path", libdir, root / "usr/sbin/qemu-ga",
             "--version"], what="qemu-ga --version with the guest's libraries")


def install_base(root: Path, busybox_src: Path, applets: Iterable[str]) -> None:
    """busybox and its applet links, the guest scripts, /etc and the empty mount points."""
    busybox = root / "bin/busybox"
    busybox.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(busybox_src, busybox)
    busybox.chmod(0o755)
    for applet in applets:
        link = root / applet.lstrip("/")
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


def write_cpio(root: Path, out: Path) -> None:
    """A newc cpio of ``root``, sorted, every file owned by root."""
    names = ["."]
    for top, dirs, files in os.walk(root):
        rel = os.path.relpath(top, root)
        names += [os.path.normpath(os.path.join(rel, n)) for n in dirs + files]
    run(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0", "-O", out], cwd=root,
        input="\n".join(sorted(names)) + "\n", what="cpio")


def write_initrd(root: Path, work: Path, out: Path) -> None:
    """cpio, then ``lz4 -l``: the kernel's unlz4 only reads the legacy frame format."""
    write_cpio(root, work / "initrd.cpio")
    run(["lz4", "-l", "-9", "-f", "-q", work / "initrd.cpio", out], what="lz4 (initrd)")


def check_host_tools(tools: Iterable[str], hint: str) -> None:
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        raise ImageBuildError(f"missing host tools: {' '.join(missing)} ({hint})")


# --- the image directory -------------------------------------------------------------------

def mounts_under(path: Path, mountinfo: str | None = None) -> list[str]:
    """Mount points at or below ``path``, deepest first, from ``/proc/self/mountinfo`` (or the
    ``mountinfo`` text given), where a space in a path is written ``\\040``."""
    prefix = str(Path(path).absolute())
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return []
    points = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
              for line in mountinfo.splitlines() if len(line.split()) > 4]
    return sorted((p for p in points if p == prefix or p.startswith(prefix + "/")),
                  key=len, reverse=True)


def remove_tree(path: Path) -> None:
    """``rm -rf path``, but never into a mount: a bind-mounted ``/dev`` or ``/proc`` left in a
    chroot would otherwise be emptied on the host. Refuses with an error instead."""
    left = mounts_under(path)
    if left:
        raise ImageBuildError(f"{left[0]} is still mounted; unmount it, then remove {path}")
    shutil.rmtree(path, ignore_errors=True)


def build_atomically(dest: Path, force: bool, progress: Progress | None,
                     build: Callable[[Path, Progress], Any]) -> Path:
    """Run ``build(tmp, report)`` and move ``tmp`` to ``dest``; return ``dest``.

    Idempotent: when ``dest/image.json`` exists and ``force`` is false, nothing is done. The
    image is built in ``.<name>.tmp-<pid>`` beside ``dest`` and renamed into place at the end,
    so ``dest`` is either complete or absent; the temporary directory is removed on failure
    and an old image survives a failed rebuild.
    """
    dest = Path(dest).absolute()  # builds change directories; relative paths would break
    if (dest / "image.json").exists() and not force:
        return dest
    report: Progress = progress or (lambda _step, _fraction: None)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    old = dest.parent / f".{dest.name}.old-{os.getpid()}"
    for stale in (tmp, old):
        remove_tree(stale)
    try:
        tmp.mkdir()
        build(tmp, report)
        if dest.exists() or dest.is_symlink():
            dest.rename(old)
        tmp.rename(dest)
    except BaseException:
        remove_tree(tmp)
        if old.exists() and not dest.exists():
            old.rename(dest)
        raise
    remove_tree(old)
    report("done", 1.0)
    return dest
