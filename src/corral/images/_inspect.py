"""Reading what image builders unpack: apt's dependency output, Debian package file names,
kernel modules' ``.modinfo`` and ELF ``DT_NEEDED`` entries. Pure functions over bytes and
text (no subprocess), so they are unit-tested on small inputs.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

from corral.errors import CorralError

_DEPENDS_RE = re.compile(rb"(?:^|\0)depends=([^\0]*)\0")
_APT_DEP_RE = re.compile(r"\s+\|?(?:Pre)?Depends:\s*([^\s<]\S*)")  # <virtual>: no .deb


class ImageBuildError(CorralError):
    """Building a guest image failed; the message says what to do about it."""

    kind = "image_build_failed"


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


def apt_problems(output: str) -> list[str]:
    """The ``W:``/``E:`` lines of apt output. ``apt-get update`` exits 0 even when every
    mirror was unreachable and only prints ``W: ... Temporary failure resolving``."""
    return [line for line in output.splitlines()
            if line.startswith(("E:", "W:")) and "unsandboxed" not in line]


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


# --- apt -----------------------------------------------------------------------------------
