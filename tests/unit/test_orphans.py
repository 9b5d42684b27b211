"""A QEMU whose run directory no record owns is ended by the sweep, and only a process that
still holds that directory's monitor socket: a reused pid is left alone."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from corral.engine.qemu.argv import RunPaths
from corral.engine.qemu.process import end_orphan

HOLDER = ("import socket, sys, time\n"
          "s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen()\n"
          "print('up', flush=True); time.sleep(60)\n")


def test_the_process_holding_the_monitor_socket_is_killed(tmp_path: Path) -> None:
    run = RunPaths(tmp_path / "vm")
    run.dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run.qmp)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "up\n"
        run.pidfile.write_text(f"{holder.pid}\n")
        assert end_orphan(run) == holder.pid
        assert holder.wait(10) == -9
    finally:
        holder.kill()
        holder.communicate()


def test_a_pid_that_is_not_the_machine_is_left_alone(tmp_path: Path) -> None:
    run = RunPaths(tmp_path / "vm")
    run.dir.mkdir()
    other = subprocess.Popen(["sleep", "30"])
    try:
        run.pidfile.write_text(f"{other.pid}\n")
        assert end_orphan(run) is None
        time.sleep(0.05)
        assert other.poll() is None
        run.pidfile.write_text("not a pid\n")
        assert end_orphan(run) is None
    finally:
        other.kill()
        other.wait()
