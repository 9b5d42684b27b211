"""Choose the accelerator: KVM only where it can really run an ordinary guest, else TCG.

``/dev/kvm`` existing is not enough: some hosts expose a paravirtual KVM (PVM) without VT-x or
AMD-V that runs only specially built guest kernels. So KVM needs both a ``/dev/kvm`` that opens
read-write and a CPU that shows ``vmx`` or ``svm``. The setting ``engine.accel`` (``accel`` in
the configuration file's ``[engine]`` table, or ``CORRAL_ACCEL=kvm|tcg``) overrides.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Accel:
    name: str  # "kvm" or "tcg"
    reason: str


def _cpu_flags(cpuinfo: Path) -> set[str]:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def detect(env: Mapping[str, str] | None = None, kvm: Path = Path("/dev/kvm"),
           cpuinfo: Path = Path("/proc/cpuinfo")) -> Accel:
    """Return the accelerator to use and why.

    :raises InvalidSpec: when ``engine.accel`` names something other than kvm or tcg.
    """
    from corral import settings

    forced = settings.value("engine.accel", env)
    if forced:
        return Accel(forced, f"set by {settings.source('engine.accel', env)}")
    try:
        fd = os.open(kvm, os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        return Accel("tcg", f"{kvm} cannot be opened ({err.strerror}); using TCG emulation")
    os.close(fd)
    flags = _cpu_flags(cpuinfo)
    if flags & {"vmx", "svm"}:
        return Accel("kvm", f"{kvm} opens and the CPU has {'vmx' if 'vmx' in flags else 'svm'}")
    return Accel("tcg", f"{kvm} opens but the CPU shows no vmx/svm (a paravirtual KVM cannot "
                        "run ordinary guests); using TCG emulation")


def tsc_khz(cpuinfo: Path = Path("/proc/cpuinfo")) -> int | None:
    """The host TSC frequency in kHz, for the guest's ``tsc_early_khz``.

    Under TCG the guest reads the host TSC, and without this hint a busy host makes the early
    calibration fail and the guest hang (shared/notes/guest-image.md).
    """
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("cpu MHz"):
                return int(float(line.partition(":")[2]) * 1000)
    except (OSError, ValueError):
        pass
    return None
