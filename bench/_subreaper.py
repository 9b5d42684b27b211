"""Run one command as a child subreaper: ``python _subreaper.py CMD [ARGS...]``.

libvirt daemonizes each QEMU, so QEMU becomes an orphan. On hosts whose PID 1 reaps orphans
only every ~1.7 s, libvirt's destroy (which polls ``kill(pid, 0)``) then waits that long
(shared/notes/baseline-libvirt-vs-raw-qemu.md, caveat 1). Under this wrapper the orphans are
re-parented here and reaped at once by a blocking ``wait()``, as systemd would do.

SIGTERM and SIGINT are forwarded to the command; the wrapper exits once it has no child left.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from types import FrameType

PR_SET_CHILD_SUBREAPER = 36


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: _subreaper.py CMD [ARGS...]", file=sys.stderr)
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print("prctl(PR_SET_CHILD_SUBREAPER) failed", file=sys.stderr)
        return 1
    child = subprocess.Popen(argv)

    def forward(signum: int, _frame: FrameType | None) -> None:
        if child.returncode is None:
            os.kill(child.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    while True:
        try:
            pid, raw = os.wait()
        except ChildProcessError:
            return status
        if pid == child.pid:
            child.returncode = os.waitstatus_to_exitcode(raw)
            status = child.returncode if child.returncode >= 0 else 128 - child.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
