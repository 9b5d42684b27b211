"""The CPU priority (``nice``) of a process and of every one of its threads: Linux keeps
it per thread, and a QEMU runs its vCPUs in threads of their own (a thread made later takes
the value of the thread that makes it, QEMU's main one among them).

Only root may give a process back a lower value than it has; each call returns None when
the process is gone or may not be changed, and changes nothing then.
"""

from __future__ import annotations

import os
from pathlib import Path

EASE = 10  # nice steps a guest yields to the boots still going (corral.service.lifecycle)


def started(pid: int, proc: Path = Path("/proc")) -> int | None:
    """When process ``pid`` started (clock ticks after boot): with its pid, its identity."""
    try:
        # after the command name: state is field 3, starttime 22 (proc(5))
        return int((proc / str(pid) / "stat").read_text().rpartition(")")[2].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def nice_of(pid: int) -> int | None:
    try:
        return os.getpriority(os.PRIO_PROCESS, pid)
    except OSError:
        return None


def renice(pid: int, nice: int, start: int | None = None) -> int | None:
    """Give every thread of process ``pid`` the value ``nice`` (-20..19); its start time
    (None: gone, another process with its pid since ``start``, or not allowed)."""
    now = started(pid)
    if now is None or (start is not None and now != start):
        return None
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    done = 0
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, int(tid), max(-20, min(19, nice)))
            done += 1
        except ProcessLookupError:  # a thread that ended meanwhile
            continue
        except OSError:
            return None
    return now if done else None
