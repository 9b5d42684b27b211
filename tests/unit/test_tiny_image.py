"""Pure helpers of the tiny image builder: no network, no apt, no QEMU."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from corral.errors import CommandFailed, CorralError
from corral.host.runner import Result
from corral.images import tiny
from corral.images.tiny import (
    ImageBuildError,
    bzimage_payload,
    deb_name_version,
    elf_needed,
    modinfo_depends,
    module_closure,
    module_name,
    parse_apt_depends,
    resolve_in,
)

# --- apt ----------------------------------------------------------------------------------

APT_CACHE_DEPENDS = """\
linux-image-cloud-amd64
  Depends: linux-image-6.1.0-56-cloud-amd64
qemu-guest-agent
  PreDepends: init-system-helpers
  Depends: libc6
 |Depends: libglib2.0-0
  Depends: <libfoo-virtual>
    libfoo1
  Depends: liburing2
  Conflicts: qemu-ga
"""


def test_parse_apt_depends() -> None:
    deps = parse_apt_depends(APT_CACHE_DEPENDS)
    assert deps == {
        "linux-image-cloud-amd64": ["linux-image-6.1.0-56-cloud-amd64"],
        "qemu-guest-agent": ["init-system-helpers", "libc6", "libglib2.0-0", "liburing2"],
    }


def test_parse_apt_depends_empty_output() -> None:
    assert parse_apt_depends("") == {}


def test_deb_name_version_unquotes_the_epoch() -> None:
    assert deb_name_version("qemu-guest-agent_1%3a7.2+dfsg-7+deb12u18+b3_amd64.deb") == (
        "qemu-guest-agent", "1:7.2+dfsg-7+deb12u18+b3")
    assert deb_name_version("libudev1_252.39-1~deb12u2_amd64.deb") == (
        "libudev1", "252.39-1~deb12u2")


def test_deb_name_version_rejects_odd_names() -> None:
    with pytest.raises(ImageBuildError):
        deb_name_version("not-a-deb.deb")


class FakeRun:
    """Stands in for corral.host.runner.run: fails the first ``fail`` calls of each argv[0..1]."""

    def __init__(self, fail: int = 1) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail

    def __call__(self, argv: Sequence[str | Path], **_: Any) -> Result:
        args = [str(a) for a in argv]
        self.calls.append(args)
        if args[:2] != ["apt-get", "update"] and self.fail > 0:
            self.fail -= 1
            raise CommandFailed(args, 100, "E: No packages found")
        return Result(args, 0, "ok", "")


def test_apt_updates_once_when_root(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRun(fail=1)
    monkeypatch.setattr(tiny, "run", fake)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert tiny._Apt()(["apt-cache", "depends", "x"], "apt-cache depends") == "ok"
    assert fake.calls == [["apt-cache", "depends", "x"], ["apt-get", "update"],
                          ["apt-cache", "depends", "x"]]


def test_apt_gives_up_after_one_update(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRun(fail=2)
    monkeypatch.setattr(tiny, "run", fake)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(ImageBuildError, match="apt-get update"):
        tiny._Apt()(["apt-get", "download", "x"], "apt-get download")
    assert [c[:2] for c in fake.calls].count(["apt-get", "update"]) == 1


def test_apt_explains_when_not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRun(fail=1)
    monkeypatch.setattr(tiny, "run", fake)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ImageBuildError, match="Run 'apt-get update' as root"):
        tiny._Apt()(["apt-get", "download", "x"], "apt-get download")
    assert len(fake.calls) == 1


# --- kernel modules -----------------------------------------------------------------------

def test_module_name_normalises_paths_and_dashes() -> None:
    assert module_name("kernel/drivers/char/hw_random/virtio-rng.ko") == "virtio_rng"
    assert module_name("virtio-rng") == "virtio_rng"
    assert module_name("virtio_net.ko") == "virtio_net"


def modinfo(**fields: str) -> bytes:
    """A fake .ko: some ELF-ish noise, then a .modinfo-like run of NUL-terminated k=v strings."""
    body = b"".join(f"{k}={v}".encode() + b"\0" for k, v in fields.items())
    return b"\x7fELF\0\0junk\0" + body + b"\0trailing"


def test_modinfo_depends() -> None:
    ko = modinfo(license="GPL", depends="virtio,virtio_ring,net-failover", vermagic="6.1")
    assert modinfo_depends(ko) == ["virtio", "virtio_ring", "net_failover"]


def test_modinfo_depends_empty_and_absent() -> None:
    assert modinfo_depends(modinfo(license="GPL", depends="", intree="Y")) == []
    assert modinfo_depends(modinfo(license="GPL")) == []
    # "softdepends=" or "xdepends=" must not be taken for "depends="
    assert modinfo_depends(modinfo(xdepends="evil")) == []


FAKE_KERNEL = {
    "virtio_ring": [],
    "virtio": ["virtio_ring"],
    "virtio_pci_modern_dev": [],
    "virtio_pci_legacy_dev": [],
    "virtio_pci": ["virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio", "virtio_ring"],
    "failover": [],
    "net_failover": ["failover"],
    "virtio_net": ["virtio", "virtio_ring", "net_failover"],
    "virtio_rng": ["virtio", "virtio_ring"],
    "evdev": [],
}


def test_module_closure_puts_dependencies_first() -> None:
    order = module_closure(["virtio_pci", "virtio-net", "virtio-rng", "evdev"],
                           lambda name: FAKE_KERNEL[name])
    assert sorted(order) == sorted(FAKE_KERNEL)                   # each module exactly once
    for name, deps in FAKE_KERNEL.items():
        for dep in deps:
            assert order.index(dep) < order.index(name), (dep, name)
    assert order[0] == "virtio_pci_modern_dev"                    # depth first, in given order


def test_module_closure_only_takes_what_is_needed() -> None:
    assert module_closure(["virtio"], lambda n: FAKE_KERNEL[n]) == ["virtio_ring", "virtio"]


def test_module_closure_reports_a_cycle() -> None:
    graph = {"a": ["b"], "b": ["c"], "c": ["a"]}
    with pytest.raises(ImageBuildError, match="a -> b -> c -> a"):
        module_closure(["a"], lambda n: graph[n])


def test_module_closure_passes_on_unknown_modules() -> None:
    def depends(name: str) -> list[str]:
        raise ImageBuildError(f"no module {name}")
    with pytest.raises(ImageBuildError, match="no module nope"):
        module_closure(["nope"], depends)


# --- ELF ----------------------------------------------------------------------------------

def make_elf(needed: Sequence[str]) -> bytes:
    """A minimal ELF64 LE file: header, .dynstr, .dynamic, three section headers."""
    dynstr = b"\0"
    offsets = []
    for name in needed:
        offsets.append(len(dynstr))
        dynstr += name.encode() + b"\0"
    dynamic = b"".join(struct.pack("<qQ", 1, off) for off in offsets)     # DT_NEEDED
    dynamic += struct.pack("<qQ", 5, 0) + struct.pack("<qQ", 0, 0)        # DT_STRTAB, DT_NULL
    dynstr_off = 64
    dynamic_off = dynstr_off + len(dynstr)
    shoff = dynamic_off + len(dynamic)
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x28, shoff)
    struct.pack_into("<HHH", header, 0x3A, 64, 3, 0)
    null = bytes(64)
    sh_dynstr = struct.pack("<IIQQQQIIQQ", 0, 3, 0, 0, dynstr_off, len(dynstr), 0, 0, 1, 0)
    sh_dynamic = struct.pack("<IIQQQQIIQQ", 0, 6, 0, 0, dynamic_off, len(dynamic), 1, 0, 8, 16)
    return bytes(header) + dynstr + dynamic + null + sh_dynstr + sh_dynamic


def test_elf_needed_reads_dt_needed_in_order() -> None:
    libs = ["libudev.so.1", "libglib-2.0.so.0", "libc.so.6"]
    assert elf_needed(make_elf(libs)) == libs


def test_elf_needed_of_a_static_file_is_empty() -> None:
    assert elf_needed(make_elf([])) == []


def test_elf_needed_rejects_non_elf_and_32_bit() -> None:
    with pytest.raises(ImageBuildError):
        elf_needed(b"#!/bin/sh\n" + bytes(100))
    elf32 = bytearray(make_elf(["libc.so.6"]))
    elf32[4] = 1
    with pytest.raises(ImageBuildError):
        elf_needed(bytes(elf32))


# --- bzImage ------------------------------------------------------------------------------

def make_bzimage(payload: bytes, setup_sects: int = 3, offset: int = 100,
                 version: int = 0x20F, tail: bytes = b"DECOMPRESSOR-CODE") -> bytes:
    start = (setup_sects or 4) + 1
    image = bytearray(start * 512 + offset)
    image[0x1F1] = setup_sects
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, version)
    struct.pack_into("<II", image, 0x248, offset, len(payload))
    if offset >= 4:   # a decoy magic before the payload: the header, not a search, finds it
        image[start * 512:start * 512 + 4] = tiny.LZ4_LEGACY_MAGIC
    return bytes(image) + payload + tail


def test_bzimage_payload_located_from_the_setup_header() -> None:
    stream = tiny.LZ4_LEGACY_MAGIC + b"compressed-kernel-bytes"
    image = make_bzimage(stream + struct.pack("<I", 53243444))
    assert bzimage_payload(image) == (stream, 53243444)


def test_bzimage_payload_setup_sects_zero_means_four() -> None:
    stream = tiny.LZ4_LEGACY_MAGIC + b"x" * 20
    image = make_bzimage(stream + struct.pack("<I", 7), setup_sects=0, offset=0)
    assert bzimage_payload(image) == (stream, 7)


def test_bzimage_payload_rejects_other_compressions() -> None:
    gzip_payload = b"\x1f\x8b\x08\x00" + b"y" * 20 + struct.pack("<I", 7)
    with pytest.raises(ImageBuildError, match="not lz4"):
        bzimage_payload(make_bzimage(gzip_payload))


def test_bzimage_payload_rejects_bad_headers() -> None:
    good = make_bzimage(tiny.LZ4_LEGACY_MAGIC + b"z" * 20 + struct.pack("<I", 7))
    with pytest.raises(ImageBuildError, match="not a bzImage"):
        bzimage_payload(b"\x7fELF" + bytes(1000))
    with pytest.raises(ImageBuildError, match=r"older than 2\.08"):
        bzimage_payload(make_bzimage(b"", version=0x206))
    with pytest.raises(ImageBuildError, match="outside the file"):
        bzimage_payload(good[:-40])


# --- files --------------------------------------------------------------------------------

def test_resolve_in_keeps_absolute_symlinks_inside_the_tree(tmp_path: Path) -> None:
    real = tmp_path / "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    real.parent.mkdir(parents=True)
    real.write_bytes(b"loader")
    (tmp_path / "lib64").mkdir()
    (tmp_path / "lib64/ld-linux-x86-64.so.2").symlink_to(f"/{real.relative_to(tmp_path)}")
    (tmp_path / "lib/x86_64-linux-gnu/libfoo.so.1").symlink_to("libfoo.so.1.2")
    (tmp_path / "lib/x86_64-linux-gnu/libfoo.so.1.2").symlink_to("../../lib64/ld-linux-x86-64.so.2")
    assert resolve_in(tmp_path, "lib64/ld-linux-x86-64.so.2") == real
    assert resolve_in(tmp_path, "lib/x86_64-linux-gnu/libfoo.so.1") == real
    assert resolve_in(tmp_path, "lib/x86_64-linux-gnu/libmissing.so.9") is None


def test_resolve_in_refuses_to_leave_the_tree(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib/escape.so").symlink_to("../../../../etc/hostname")
    (tmp_path / "lib/loop.so").symlink_to("loop.so")
    assert resolve_in(tmp_path, "lib/escape.so") is None
    assert resolve_in(tmp_path, "lib/loop.so") is None


def test_guest_files_ship_with_the_package() -> None:
    guest = resources.files("corral.images") / "guest"
    for name in tiny.GUEST_FILES:
        text = (guest / name).read_text()
        assert text.startswith("#!/bin/sh\n"), name
    init = (guest / "init").read_text()
    assert "GUEST-READY ip=" in init and "setsid cttyhack sh" in init
    assert init.index("qemu-ga -m virtio-serial") < init.index("udhcpc")


@pytest.mark.skipif(shutil.which("sh") is None, reason="no /bin/sh")
@pytest.mark.parametrize("name", sorted(tiny.GUEST_FILES))
def test_guest_scripts_parse(name: str) -> None:
    script = resources.files("corral.images") / "guest" / name
    subprocess.run(["sh", "-n", "-c", script.read_text()], check=True)


# --- build_tiny's bookkeeping -------------------------------------------------------------

def test_build_tiny_is_idempotent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "tiny"
    dest.mkdir()
    (dest / "image.json").write_text("{}")

    def boom(*_: Any, **__: Any) -> None:
        raise AssertionError("must not build")
    monkeypatch.setattr(tiny, "_build", boom)
    assert tiny.build_tiny(dest) == dest


def test_build_tiny_failure_leaves_no_temp_dir_and_keeps_old_image(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "tiny"
    dest.mkdir()
    (dest / "image.json").write_text('{"old": true}')

    def fail(out: Path, report: tiny.Progress) -> None:
        (out / "vmlinux").write_bytes(b"half")
        report("extracting", 0.5)
        raise ImageBuildError("no network")
    monkeypatch.setattr(tiny, "_build", fail)
    steps: list[tuple[str, float]] = []
    with pytest.raises(CorralError, match="no network"):
        tiny.build_tiny(dest, force=True, progress=lambda s, f: steps.append((s, f)))
    assert steps == [("extracting", 0.5)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]
    assert (dest / "image.json").read_text() == '{"old": true}'


def test_build_tiny_swaps_the_new_image_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "images" / "tiny"

    def fake(out: Path, report: tiny.Progress) -> None:
        assert out.name.startswith(".tiny.tmp-")
        (out / "image.json").write_text('{"new": true}')
    monkeypatch.setattr(tiny, "_build", fake)
    steps: list[tuple[str, float]] = []
    assert tiny.build_tiny(dest, progress=lambda s, f: steps.append((s, f))) == dest
    assert (dest / "image.json").read_text() == '{"new": true}'
    assert steps[-1] == ("done", 1.0)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["tiny", "tiny-disk"]
    assert json.loads((dest.parent / "tiny-disk" / "image.json").read_text())["disk"] == \
        "../tiny/root.qcow2"
