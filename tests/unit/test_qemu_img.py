"""``corral.host.qemu_img``: golden files of every command line Corral runs (regenerate with
CORRAL_REGEN_GOLDEN=1), and ``qemu-img info`` parsed from what the real qemu-img prints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from corral.errors import CommandFailed
from corral.host import qemu_img

GOLDEN = Path(__file__).parent / "golden"

# one case per way Corral calls qemu-img today
CASES: dict[str, list[str]] = {
    "create-blank": qemu_img.create_argv("/vms/web/disk0.qcow2", "qcow2", 10 << 30),
    "create-raw": qemu_img.create_argv("/disks/d1.raw", "raw", 1 << 30),
    "create-overlay": qemu_img.create_argv("/vms/web/root.qcow2", "qcow2",
                                           backing="/img/debian/root.qcow2",
                                           backing_format="qcow2"),
    "create-overlay-grown": qemu_img.create_argv("/disks/d1.qcow2", "qcow2", 20 << 30,
                                                 backing="/img/debian/root.qcow2",
                                                 backing_format="qcow2"),
    "info-shared": qemu_img.info_argv("/vms/web/disk0.qcow2"),
    "info-exclusive": qemu_img.info_argv("/data/cloud.img", force_share=False),
    "check": qemu_img.check_argv("/data/cloud.img"),
    "convert-import": qemu_img.convert_argv("/data/cloud.img", "/img/.x/root.qcow2",
                                            src_format="raw", progress=True),
    "convert-zstd": qemu_img.convert_argv("/b/root.raw", "/img/debian/root.qcow2",
                                          src_format="raw", compress_zstd=True),
    "convert-snapshot": qemu_img.convert_argv("/vms/web/disk0.qcow2", "/t/disk0.qcow2",
                                              src_format="qcow2", snapshot="s1",
                                              force_share=True),
    "rebase-unsafe": qemu_img.rebase_unsafe_argv("/vms/web/root.qcow2",
                                                 "/img/debian/root.qcow2"),
    "resize": qemu_img.resize_argv("/disks/d1.qcow2", "qcow2", 20 << 30),
    "snapshot-create": qemu_img.snapshot_argv("/vms/web/disk0.qcow2", "create", "s1"),
    "snapshot-apply": qemu_img.snapshot_argv("/vms/web/disk0.qcow2", "apply", "s1"),
    "snapshot-delete": qemu_img.snapshot_argv("/vms/web/disk0.qcow2", "delete", "s1"),
}


def test_golden() -> None:
    path = GOLDEN / "qemu-img.json"
    if os.environ.get("CORRAL_REGEN_GOLDEN"):
        path.write_text(json.dumps(CASES, indent=1) + "\n")
    assert json.loads(path.read_text()) == CASES


needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None,
                                    reason="qemu-img is not installed")


def _run(argv: list[str]) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


@needs_qemu_img
def test_info_of_an_overlay_with_snapshots(tmp_path: Path) -> None:
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    _run(qemu_img.create_argv(base, "qcow2", 64 << 20))
    _run(qemu_img.create_argv(top, "qcow2", backing=base, backing_format="qcow2"))
    _run(qemu_img.snapshot_argv(top, "create", "first"))
    _run(qemu_img.snapshot_argv(top, "create", "second"))
    info = qemu_img.parse_info(_run(qemu_img.info_argv(top)))
    assert (info.format, info.virtual_size) == ("qcow2", 64 << 20)
    assert info.actual_size is not None and info.actual_size > 0
    assert (info.backing_file, info.backing_path, info.backing_format) == (
        str(base), str(base), "qcow2")
    assert [(s.id, s.name, s.vm_state_size) for s in info.snapshots] == [
        ("1", "first", 0), ("2", "second", 0)]
    assert (info.dirty, info.corrupt) == (False, False)
    assert qemu_img.info(top) == info  # the runner reads the same thing


@needs_qemu_img
def test_info_of_raw_and_a_relative_backing_file(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    _run(qemu_img.create_argv(raw, "raw", 1 << 20))
    info = qemu_img.info(raw, force_share=False)
    assert (info.format, info.virtual_size, info.backing_file, info.snapshots) == (
        "raw", 1 << 20, None, ())
    top = tmp_path / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", "disk.raw",
                    str(top)], check=True, cwd=tmp_path)
    info = qemu_img.info(top)
    assert (info.backing_file, info.backing_path, info.backing_format) == (
        "disk.raw", str(raw), "raw")


@needs_qemu_img
def test_info_reports_the_dirty_and_corrupt_bits(tmp_path: Path) -> None:
    image = tmp_path / "broken.qcow2"
    _run(qemu_img.create_argv(image, "qcow2", 1 << 20))
    with image.open("r+b") as f:  # qcow2 v3 incompatible features: bit 0 dirty, bit 1 corrupt
        f.seek(72)
        f.write((0b11).to_bytes(8, "big"))
    info = qemu_img.info(image)
    assert (info.dirty, info.corrupt) == (True, True)


@needs_qemu_img
def test_info_of_a_file_that_is_no_image_fails(tmp_path: Path) -> None:
    missing = tmp_path / "missing.qcow2"
    with pytest.raises(CommandFailed) as err:
        qemu_img.info(missing)
    assert err.value.argv == qemu_img.info_argv(missing) and err.value.returncode != 0
    with pytest.raises(ValueError):
        qemu_img.parse_info('{"filename": "x"}')


@needs_qemu_img
def test_convert_reports_progress_and_check_finds_it_intact(tmp_path: Path) -> None:
    src, dest = tmp_path / "src.raw", tmp_path / "dest.qcow2"
    _run(qemu_img.create_argv(src, "raw", 8 << 20))
    seen: list[float] = []
    qemu_img.convert(src, dest, src_format="raw", progress=seen.append)
    assert seen and seen[-1] == 1.0
    assert qemu_img.info(dest).format == "qcow2"
    assert qemu_img.check_intact(dest)
    with pytest.raises(CommandFailed, match="could not convert"):
        qemu_img.convert(tmp_path / "absent.raw", dest, src_format="raw", progress=seen.append)
