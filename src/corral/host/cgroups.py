"""CPU weight and cap for one VM's QEMU, in a cgroup of its own named
``corral-<tag>-<vm>``, where ``tag`` is a short hash of the daemon's home
(:attr:`corral.config.Paths.tag`): two daemons on one host may each have a VM ``web``, and
neither ever joins or removes the other's group.

Both cgroup versions are handled: v1 (separate ``cpu`` hierarchy: ``cpu.shares`` and
``cpu.cfs_quota_us``/``cpu.cfs_period_us``) and v2 (unified: ``cpu.weight`` and ``cpu.max``,
with the ``cpu`` controller enabled in the parent). A weight is given on v2's scale, 1-10000
with 100 as the default, and converted for v1 (shares = weight × 1024 / 100). A cap is a
percentage of one CPU. The group is removed when the VM's QEMU is gone (by the scheduler's
``release``).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from corral.errors import CorralError

ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000


def _v2() -> bool:
    return (ROOT / "cgroup.controllers").exists()


def group_path(tag: str, vm: str) -> Path:
    """The group of VM ``vm`` of the daemon whose home has tag ``tag``."""
    name = f"corral-{tag}-{vm}"
    return (ROOT / name) if _v2() else (ROOT / "cpu" / name)


def apply(tag: str, vm: str, pid: int, weight: int | None, cap_percent: float | None
          ) -> Path:
    """Create the VM's group with its limits and move ``pid`` (all its threads) into it.

    :raises CorralError: when the host's cgroups cannot be written (e.g. not root).
    """
    path = group_path(tag, vm)
    try:
        path.mkdir(exist_ok=True)
        if _v2():
            with contextlib.suppress(OSError):
                (ROOT / "cgroup.subtree_control").write_text("+cpu")
            if weight is not None:
                (path / "cpu.weight").write_text(str(weight))
            quota = "max" if cap_percent is None else str(int(cap_percent * PERIOD_US / 100))
            (path / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        else:
            if weight is not None:
                (path / "cpu.shares").write_text(str(max(2, weight * 1024 // 100)))
            (path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            cfs = -1 if cap_percent is None else int(cap_percent * PERIOD_US / 100)
            (path / "cpu.cfs_quota_us").write_text(str(cfs))
        (path / "cgroup.procs").write_text(str(pid))
    except OSError as err:
        remove_group(path)
        raise CorralError(f"cannot set CPU limits for '{vm}' in {path}: {err.strerror}") from err
    return path


def remove_group(path: Path) -> None:
    """Remove one group (its processes are gone); nothing if there is none."""
    with contextlib.suppress(OSError):
        os.rmdir(path)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, in seconds (for tests and benchmarks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
