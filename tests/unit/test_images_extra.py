"""Pure helpers of the arm64 and debian image builders and of the shared build module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from corral.errors import CommandFailed
from corral.host.runner import Result
from corral.images import _build, arm64, debian
from corral.images._build import AARCH64, X86_64, Apt, ImageBuildError, apt_problems

# --- _build --------------------------------------------------------------------------------

def test_guest_arch_paths() -> None:
    assert AARCH64.libdir == "lib/aarch64-linux-gnu"
    assert AARCH64.lib_dirs[:2] == ("lib/aarch64-linux-gnu", "usr/lib/aarch64-linux-gnu")
    assert X86_64.interp == "lib64/ld-linux-x86-64.so.2"
    assert AARCH64.interp == "lib/ld-linux-aarch64.so.1"


def test_apt_problems_finds_warnings_but_not_the_sandbox_note() -> None:
    out = ("Hit:1 http://deb.debian.org/debian bookworm InRelease\n"
           "W: Failed to fetch http://x/dists/bookworm/InRelease  Temporary failure resolving\n"
           "W: Download is performed unsandboxed as root as file ... couldn't be accessed\n"
           "E: Some index files failed to download.\n")
    assert apt_problems(out) == [out.splitlines()[1], out.splitlines()[3]]
    assert apt_problems("Reading package lists...\n") == []


class FakeRun:
    def __init__(self, stdout: str = "", fail_first: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.stdout = stdout
        self.fail_first = fail_first

    def __call__(self, argv: Any, **_: Any) -> Result:
        args = [str(a) for a in argv]
        self.calls.append(args)
        if self.fail_first:
            self.fail_first = False
            raise CommandFailed(args, 100, "E: Unable to locate package")
        return Result(args, 0, self.stdout, "")


def test_apt_puts_options_after_the_program(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRun()
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    Apt(["-o", "APT::Architecture=arm64"], runner=fake)(["apt-get", "download", "x"], "dl")
    assert fake.calls == [["apt-get", "-o", "APT::Architecture=arm64", "download", "x"]]


def test_apt_update_with_warnings_fails() -> None:
    fake = FakeRun(stdout="W: Failed to fetch http://mirror  Temporary failure resolving\n")
    with pytest.raises(ImageBuildError, match="Temporary failure resolving"):
        Apt(runner=fake).update()


def test_apt_hint_is_part_of_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    apt = Apt(runner=FakeRun(fail_first=True), hint="is the mirror reachable?")
    with pytest.raises(ImageBuildError, match=r"-- is the mirror reachable\?$"):
        apt(["apt-cache", "depends", "x"], "apt-cache depends")


MOUNTINFO = """\
22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
40 22 0:5 / /tmp/img/.debian.tmp-1/work/root/proc rw - proc proc rw
41 22 0:6 / /tmp/img/.debian.tmp-1/work/root/dev/pts rw - devpts devpts rw
42 22 8:1 /c /tmp/img/.debian.tmp-1/work/root/var/cache/apt\\040x rw - ext4 /dev/sda1 rw
43 22 0:7 / /tmp/img/.debian.tmp-10 rw - tmpfs tmpfs rw
"""


def test_mounts_under_lists_deepest_first_and_unescapes() -> None:
    got = _build.mounts_under(Path("/tmp/img/.debian.tmp-1"), MOUNTINFO)
    assert got == ["/tmp/img/.debian.tmp-1/work/root/var/cache/apt x",
                   "/tmp/img/.debian.tmp-1/work/root/dev/pts",
                   "/tmp/img/.debian.tmp-1/work/root/proc"]
    assert _build.mounts_under(Path("/srv"), MOUNTINFO) == []


def test_remove_tree_refuses_to_enter_a_mount(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "root/proc").mkdir(parents=True)
    monkeypatch.setattr(_build, "mounts_under", lambda p: [str(p / "root/proc")])
    with pytest.raises(ImageBuildError, match="still mounted"):
        _build.remove_tree(tmp_path)
    assert (tmp_path / "root/proc").is_dir()
    monkeypatch.undo()
    _build.remove_tree(tmp_path)
    assert not tmp_path.exists()


# --- arm64 ---------------------------------------------------------------------------------

class Spec:
    memory_bytes = 256 << 20
    cpus = 1
    cpu_model = "cortex-a57"
    kernel = "/img/Image"
    initrd: str | None = "/img/initrd.lz4"
    cmdline = "console=ttyAMA0 quiet"


def test_arm64_machine_args() -> None:
    assert arm64.arm64_machine_args(Spec()) == [
        "-machine", "virt", "-accel", "tcg", "-cpu", "cortex-a57", "-m", "256M", "-smp", "1",
        "-kernel", "/img/Image", "-initrd", "/img/initrd.lz4",
        "-append", "console=ttyAMA0 quiet"]


def test_arm64_machine_args_never_uses_cpu_max() -> None:
    spec = Spec()
    spec.cpu_model, spec.initrd = "max", None
    argv = arm64.arm64_machine_args(spec)
    assert argv[argv.index("-cpu") + 1] == "cortex-a57" and "-initrd" not in argv


def test_check_arm64_image() -> None:
    head = bytearray(64)
    head[:2] = b"MZ"
    head[0x38:0x3C] = b"ARM\x64"
    arm64.check_arm64_image(bytes(head))
    with pytest.raises(ImageBuildError, match="not an uncompressed Image"):
        arm64.check_arm64_image(b"\x1f\x8b" + bytes(62))


def test_private_apt_options(tmp_path: Path) -> None:
    opts = arm64.private_apt_options(tmp_path / "apt", "arm64")
    assert f"Dir::State::Lists={tmp_path / 'apt/lists'}" in opts
    assert "APT::Architectures=arm64" in opts
    assert (tmp_path / "apt/lists/partial").is_dir()


# --- debian --------------------------------------------------------------------------------

DEB822 = """\
Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""


def test_apt_mirrors_from_deb822() -> None:
    assert debian.apt_mirrors([DEB822]) == ("http://mirror.example/debian",
                                            "http://mirror.example/debian-security")


def test_apt_mirrors_from_one_line_sources_and_defaults() -> None:
    one_line = ("# deb http://old.example/debian bookworm main\n"
                "deb [signed-by=/k.gpg] http://a.example/debian bookworm main contrib\n")
    main, security = debian.apt_mirrors([one_line])
    assert main == "http://a.example/debian"
    assert security == debian.DEFAULT_MIRRORS[1]
    assert debian.apt_mirrors([]) == debian.DEFAULT_MIRRORS


def test_sources_list_has_all_three_suites() -> None:
    text = debian.sources_list("http://m/debian", "http://m/sec")
    assert text.splitlines() == ["deb http://m/debian bookworm main",
                                 "deb http://m/debian bookworm-updates main",
                                 "deb http://m/sec bookworm-security main"]


def test_debootstrap_progress_only_moves_forward() -> None:
    lines = ["gpgv: Good signature"]
    lines += [f'2026 URL:http://m/p{i}.deb [1/1] -> "/c/p{i}.deb" [1]' for i in range(10)]
    lines += ["Unpacking base-passwd (3.6.1) ...", "Setting up base-passwd (3.6.1) ..."]
    lines += [f"Unpacking p{i} (1) ..." for i in range(10)]
    lines += [f"Setting up p{i} (1) ..." for i in range(10)]
    seen = [debian.debootstrap_progress("\n".join(lines[:n]) + "\n", 10)
            for n in range(len(lines) + 1)]
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions)
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert "retrieving" in seen[5][0] and "installing" in seen[-1][0]


def test_build_debian_needs_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(ImageBuildError, match="needs root"):
        debian.build_debian(tmp_path / "debian", cache_dir=tmp_path / "cache")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
