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
import logging
import os
from pathlib import Path
from typing import Any

from corral.errors import CorralError

log = logging.getLogger(__name__)

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


# ----- memory and pids limits of a confined QEMU -----------------------------------------
# These groups are made below the daemon's own group in each hierarchy (not at the root), so
# what QEMU uses stays counted where the daemon's own use is, and QEMU joins them before it
# runs its first instruction (:mod:`corral.engine.qemu.spawn`).
LIMITS = ("memory", "pids")


def _names(names: str, controller: str) -> bool:
    """Whether a ``/proc/PID/cgroup`` line with controllers ``names`` is ``controller``'s
    (on v2 the one unified line is every controller's)."""
    return names == "" if _v2() else controller in names.split(",")


def _own(controller: str) -> str | None:
    """The daemon's own group in ``controller``'s hierarchy ('' at its root)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _id, names, path = line.split(":", 2)
        if _names(names, controller):
            return path.lstrip("/")
    return None


def _base(controller: str) -> Path | None:
    own = _own(controller)
    if own is None:
        return None
    top = ROOT if _v2() else ROOT / controller
    return top / own if own else top


def limit_group(tag: str, vm: str, controller: str) -> Path | None:
    base = _base(controller)
    return None if base is None else base / f"corral-{tag}-{vm}"


def limits_unavailable() -> str | None:
    """Why memory and pids limits cannot be set on this host (None: they can)."""
    for controller in LIMITS:
        base = _base(controller)
        if base is None or not base.is_dir():
            return f"no {controller} cgroup controller is mounted"
        if not os.access(base, os.W_OK):
            return f"{base} is not writable (needs root)"
        if _v2() and controller not in (base / "cgroup.controllers").read_text().split():
            return f"the {controller} controller is not enabled in {base}"
    return None


def make_limits(tag: str, vm: str, memory: int, pids: int) -> list[Path]:
    """Make the VM's memory and pids groups with their limits; the ``cgroup.procs`` files a
    process writes its pid into to join them.

    :raises CorralError: when a group cannot be made or limited.
    """
    procs = []
    for controller in LIMITS:
        path = limit_group(tag, vm, controller)
        if path is None:
            raise CorralError(f"no {controller} cgroup hierarchy")
        try:
            path.mkdir(exist_ok=True)
            if controller == "memory":
                name = "memory.max" if _v2() else "memory.limit_in_bytes"
                (path / name).write_text(str(memory))
            else:
                (path / "pids.max").write_text(str(pids))
        except OSError as err:
            remove_limits(tag, vm)
            raise CorralError(f"cannot limit the {controller} of '{vm}' in {path}: "
                              f"{err.strerror}") from err
        procs.append(path / "cgroup.procs")
    return procs


def remove_limits(tag: str, vm: str) -> None:
    for controller in LIMITS:
        path = limit_group(tag, vm, controller)
        if path is not None:
            remove_group(path)


def rename(tag: str, old: str, new: str) -> list[Path]:
    """VM ``old`` is now called ``new`` (a pool's clone handed out): its groups follow it,
    with the process in them, so that they go when it does. An empty group already called
    ``new`` (a leftover: a cgroup file system refuses to rename onto it) is removed first.
    A group that cannot be moved stays where it is (logged; the process keeps its limits
    either way): those are returned, for their owner to remove with the VM."""
    moves: list[tuple[Path | None, Path | None]] = [(group_path(tag, old), group_path(tag, new))]
    moves += [(limit_group(tag, old, c), limit_group(tag, new, c)) for c in LIMITS]
    stayed = []
    for src, dst in moves:
        if src is None or dst is None or not src.is_dir():
            continue
        try:
            try:
                os.rename(src, dst)
            except OSError:
                remove_group(dst)
                os.rename(src, dst)
        except OSError as err:
            log.warning("cannot rename cgroup %s to %s: %s", src, dst, err.strerror)
            stayed.append(src)
    return stayed


def limits_of(pid: int) -> dict[str, dict[str, Any]]:
    """The memory and pids groups of process ``pid`` and their limits (what ``corral show``
    tells): ``{"memory": {"group": …, "limit_bytes": …}, "pids": {…}}``."""
    out: dict[str, dict[str, Any]] = {}
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        _id, names, path = line.split(":", 2)
        for controller in LIMITS:
            if _names(names, controller):
                top = ROOT if _v2() else ROOT / controller
                group = top / path.lstrip("/")
                out[controller] = {"group": str(group), "limit": _limit(group, controller)}
    return out


def _limit(group: Path, controller: str) -> int | None:
    name = {"memory": "memory.max" if _v2() else "memory.limit_in_bytes",
            "pids": "pids.max"}[controller]
    try:
        text = (group / name).read_text().strip()
    except OSError:
        return None
    if text == "max" or int(text) >= 1 << 62:
        return None
    return int(text)


def groups_of(tag: str) -> dict[str, list[Path]]:
    """Every group of the daemon whose home has tag ``tag`` (CPU groups and limit groups), by
    VM name."""
    prefix = f"corral-{tag}-"
    tops = {group_path(tag, "_").parent} | {b for c in LIMITS if (b := _base(c)) is not None}
    found: dict[str, list[Path]] = {}
    for top in tops:
        with contextlib.suppress(OSError):
            for group in top.glob(prefix + "*"):
                if group.is_dir():
                    found.setdefault(group.name[len(prefix):], []).append(group)
    return found


def members(group: Path) -> list[int]:
    """The processes in ``group`` (none when it is gone)."""
    try:
        return [int(p) for p in (group / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []
