"""Cheap figures the kernel keeps about a process and an interface: read from ``/proc`` and
``/sys``, no command run, no lock taken (a few microseconds each). Each returns None when
the process or interface is gone."""

from __future__ import annotations

import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
NET_COUNTERS = ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets")


def cpu_seconds(pid: int, proc: Path = Path("/proc")) -> float | None:
    """User plus system CPU time of process ``pid`` (all its threads), in seconds."""
    try:
        fields = (proc / str(pid) / "stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    # after the command name: state is field 3, utime 14 and stime 15 (proc(5))
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_bytes(pid: int, proc: Path = Path("/proc")) -> int | None:
    """Resident memory of process ``pid``, in bytes."""
    try:
        return int((proc / str(pid) / "statm").read_text().split()[1]) * PAGE
    except OSError:
        return None


def own_rss_bytes() -> int:
    return rss_bytes(os.getpid()) or 0


def interface_counters(name: str, sys: Path = Path("/sys/class/net")) -> dict[str, int] | None:
    """What crossed interface ``name`` as the interface saw it (rx: received by it)."""
    try:
        return {k: int((sys / name / "statistics" / k).read_text()) for k in NET_COUNTERS}
    except (OSError, ValueError):
        return None
