"""Every ``qemu-img`` command Corral runs, and the one parser of ``qemu-img info``.

Two kinds of function live here:

* **argv builders** (``*_argv``): pure, they return the command line and do no I/O, so golden
  files can pin them (``tests/unit/test_qemu_img.py``);
* **thin runners** that run a builder's argv through :mod:`corral.host.runner`, so a failure
  raises :class:`~corral.errors.CommandFailed` with argv, exit code and stderr. They come in
  the form their callers need: plain for image builds, imports and exports, ``a``-prefixed
  (awaitable, off the event loop) for the daemon.

``qemu-img info --output=json`` is read by :func:`parse_info` alone, into :class:`ImageInfo`.
Reading an image another process holds open needs ``-U`` (``force_share``): QEMU's image
locks would refuse it otherwise.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from corral.host.runner import Result, arun, run, run_streaming

QEMU_IMG = "qemu-img"

Format = Literal["qcow2", "raw"]
SnapshotAction = Literal["create", "apply", "delete"]
_SNAPSHOT_FLAGS: dict[SnapshotAction, str] = {"create": "-c", "apply": "-a", "delete": "-d"}

# qemu-img check's exit codes: 0 clean, 3 leaked clusters only (space lost, data intact);
# 1 (check not completed), 2 (corruption) and 63 (check not supported) are not
CHECK_INTACT = (0, 3)

_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


# --- argv builders ------------------------------------------------------------------------

def create_argv(path: Path | str, fmt: str, size: int | None = None, *,
                backing: Path | str | None = None, backing_format: str | None = None
                ) -> list[str]:
    """A new image of ``size`` bytes, or an overlay on ``backing`` (its size by default)."""
    argv = [QEMU_IMG, "create", "-q", "-f", fmt]
    if backing is not None:
        argv += ["-F", backing_format or "qcow2", "-b", str(backing)]
    argv.append(str(path))
    if size is not None:
        argv.append(str(size))
    return argv


def info_argv(path: Path | str, *, force_share: bool = True) -> list[str]:
    return [QEMU_IMG, "info", "--output=json", *(["-U"] if force_share else []), str(path)]


def check_argv(path: Path | str) -> list[str]:
    return [QEMU_IMG, "check", "--output=json", str(path)]


def convert_argv(src: Path | str, dest: Path | str, *, src_format: str,
                 dest_format: str = "qcow2", snapshot: str | None = None,
                 force_share: bool = False, compress_zstd: bool = False,
                 progress: bool = False) -> list[str]:
    """A copy of ``src`` (of its internal ``snapshot`` if given) as a standalone image.
    ``compress_zstd`` writes compressed clusters; ``progress`` prints ``(n/100%)`` lines."""
    argv = [QEMU_IMG, "convert", "-p" if progress else "-q"]
    if force_share:
        argv.append("-U")
    argv += ["-f", src_format, "-O", dest_format]
    if snapshot is not None:
        argv += ["-l", f"snapshot.name={snapshot}"]
    if compress_zstd:
        argv += ["-c", "-o", "compression_type=zstd"]
    return [*argv, str(src), str(dest)]


def rebase_unsafe_argv(path: Path | str, backing: Path | str,
                       backing_format: str = "qcow2") -> list[str]:
    """Point ``path``'s header at ``backing`` without comparing any data (``-u``): right
    only when the new backing file holds the same data as the old one."""
    return [QEMU_IMG, "rebase", "-u", "-F", backing_format, "-b", str(backing), str(path)]


def resize_argv(path: Path | str, fmt: str, size: int) -> list[str]:
    return [QEMU_IMG, "resize", "-q", "-f", fmt, str(path), str(size)]


def snapshot_argv(path: Path | str, action: SnapshotAction, name: str) -> list[str]:
    """Create, apply (revert to) or delete the internal snapshot ``name`` of a qcow2."""
    return [QEMU_IMG, "snapshot", _SNAPSHOT_FLAGS[action], name, str(path)]


# --- info ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Snapshot:
    """One internal snapshot of a qcow2, as ``qemu-img info`` lists it."""

    id: str
    name: str
    vm_state_size: int  # bytes of RAM and device state kept with it; 0 for disk-only
    date_sec: int
    vm_clock_ns: int


@dataclass(frozen=True)
class ImageInfo:
    """What ``qemu-img info`` says of one image (not of its backing chain).

    ``backing_file`` is the name as written in the image's header; ``backing_path`` is that
    name resolved against the image's directory; ``data_file`` a qcow2's external data file
    (QEMU opens both on the image's behalf). ``dirty`` is the qcow2 dirty flag (an
    image left open by a QEMU that died, or one using lazy refcounts); ``corrupt`` is qcow2's
    corrupt bit (QEMU found an inconsistency and refuses to write). Both are False for raw.
    """

    filename: str
    format: str
    virtual_size: int
    actual_size: int | None
    backing_file: str | None = None
    backing_path: str | None = None
    backing_format: str | None = None
    snapshots: tuple[Snapshot, ...] = ()
    dirty: bool = False
    corrupt: bool = False
    data_file: str | None = None


def parse_info(text: str) -> ImageInfo:
    """:class:`ImageInfo` from ``qemu-img info --output=json``.

    :raises ValueError: not that JSON (a ``json.JSONDecodeError`` is a ValueError too).
    """
    raw: Any = json.loads(text)
    if not isinstance(raw, dict) or "format" not in raw or "virtual-size" not in raw:
        raise ValueError("not the output of 'qemu-img info --output=json'")
    specific = raw.get("format-specific") or {}
    data = (specific.get("data") or {}) if specific.get("type") == "qcow2" else {}
    backing = raw.get("backing-filename")
    return ImageInfo(
        filename=str(raw.get("filename", "")), format=str(raw["format"]),
        virtual_size=int(raw["virtual-size"]),
        actual_size=int(raw["actual-size"]) if "actual-size" in raw else None,
        backing_file=backing, backing_path=raw.get("full-backing-filename") or backing,
        backing_format=raw.get("backing-filename-format"),
        snapshots=tuple(Snapshot(id=str(s["id"]), name=str(s["name"]),
                                 vm_state_size=int(s.get("vm-state-size", 0)),
                                 date_sec=int(s.get("date-sec", 0)),
                                 vm_clock_ns=int(s.get("vm-clock-sec", 0)) * 10**9
                                 + int(s.get("vm-clock-nsec", 0)))
                        for s in raw.get("snapshots", ())),
        dirty=bool(raw.get("dirty-flag", False)), corrupt=bool(data.get("corrupt", False)),
        data_file=data.get("data-file"))


# --- runners ------------------------------------------------------------------------------

def info(path: Path | str, *, force_share: bool = True) -> ImageInfo:
    """:raises CommandFailed: qemu-img cannot open it. :raises ValueError: odd output."""
    return parse_info(run(info_argv(path, force_share=force_share)).stdout)


async def ainfo(path: Path | str, *, force_share: bool = True) -> ImageInfo:
    """:func:`info` for the daemon."""
    return parse_info((await arun(info_argv(path, force_share=force_share))).stdout)


def check_intact(path: Path | str) -> bool:
    """Whether ``qemu-img check`` finds the image's data intact (leaked clusters are)."""
    return run(check_argv(path), check=False).returncode in CHECK_INTACT


async def acreate(path: Path | str, fmt: str, size: int | None = None, *,
                  backing: Path | str | None = None, backing_format: str | None = None,
                  what: str = "qemu-img could not create the disk") -> Result:
    """:raises CommandFailed: with ``what`` as its message."""
    return await arun(create_argv(path, fmt, size, backing=backing,
                                  backing_format=backing_format), what=what)


def convert(src: Path | str, dest: Path | str, *, src_format: str, dest_format: str = "qcow2",
            compress_zstd: bool = False, progress: Callable[[float], None] | None = None,
            what: str = "qemu-img could not convert") -> Result:
    """Convert ``src`` into ``dest``; ``progress`` is called with the fraction done.

    :raises CommandFailed: with ``what`` as its message.
    """
    argv = convert_argv(src, dest, src_format=src_format, dest_format=dest_format,
                        compress_zstd=compress_zstd, progress=progress is not None)
    if progress is None:
        return run(argv, what=what)
    report = progress
    tail = b""

    def on_output(chunk: bytes) -> None:
        nonlocal tail
        tail = (tail + chunk)[-256:]
        if found := _PROGRESS.findall(tail):
            report(float(found[-1]) / 100)

    return run_streaming(argv, on_output, what=what)


async def aconvert(src: Path | str, dest: Path | str, *, src_format: str,
                   snapshot: str | None = None, force_share: bool = True,
                   what: str = "qemu-img could not convert") -> Result:
    """A standalone qcow2 copy of ``src`` (of its internal ``snapshot`` if given).

    :raises CommandFailed: with ``what`` as its message.
    """
    return await arun(convert_argv(src, dest, src_format=src_format, snapshot=snapshot,
                                   force_share=force_share), what=what)


def rebase_unsafe(path: Path | str, backing: Path | str, backing_format: str = "qcow2", *,
                  what: str = "qemu-img could not rebase") -> Result:
    """:raises CommandFailed: with ``what`` as its message."""
    return run(rebase_unsafe_argv(path, backing, backing_format), what=what)


async def aresize(path: Path | str, fmt: str, size: int, *,
                  what: str = "qemu-img could not resize the disk") -> Result:
    """:raises CommandFailed: with ``what`` as its message."""
    return await arun(resize_argv(path, fmt, size), what=what)


async def asnapshot(path: Path | str, action: SnapshotAction, name: str, *,
                    check: bool = True, what: str | None = None) -> Result:
    """:raises CommandFailed: with ``check``, when qemu-img fails."""
    return await arun(snapshot_argv(path, action, name), check=check, what=what)
