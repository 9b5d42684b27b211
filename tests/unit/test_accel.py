"""Accelerator detection: KVM only with /dev/kvm that opens and a CPU with vmx/svm."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.engine.accel import detect, tsc_khz
from corral.errors import InvalidSpec


@pytest.fixture
def cpuinfo(tmp_path: Path) -> Path:
    p = tmp_path / "cpuinfo"
    p.write_text("processor: 0\ncpu MHz\t\t: 2600.000\nflags\t\t: fpu sse2 avx\n")
    return p


def test_no_kvm_device(tmp_path: Path, cpuinfo: Path) -> None:
    acc = detect({}, tmp_path / "kvm", cpuinfo)
    assert acc.name == "tcg" and "cannot be opened" in acc.reason


def test_kvm_without_vmx_is_tcg(tmp_path: Path, cpuinfo: Path) -> None:
    kvm = tmp_path / "kvm"
    kvm.write_text("")
    acc = detect({}, kvm, cpuinfo)
    assert acc.name == "tcg" and "no vmx/svm" in acc.reason


def test_kvm_with_vmx(tmp_path: Path) -> None:
    kvm = tmp_path / "kvm"
    kvm.write_text("")
    info = tmp_path / "cpuinfo"
    info.write_text("flags\t: fpu vmx sse2\n")
    assert detect({}, kvm, info).name == "kvm"


def test_override(tmp_path: Path, cpuinfo: Path) -> None:
    assert detect({"CORRAL_ACCEL": "kvm"}, tmp_path / "none", cpuinfo).name == "kvm"
    with pytest.raises(InvalidSpec):
        detect({"CORRAL_ACCEL": "hvf"}, tmp_path / "none", cpuinfo)


def test_tsc(cpuinfo: Path, tmp_path: Path) -> None:
    assert tsc_khz(cpuinfo) == 2600000
    assert tsc_khz(tmp_path / "missing") is None


def test_this_host_is_detected() -> None:
    acc = detect({})
    assert acc.name in ("kvm", "tcg") and acc.reason
