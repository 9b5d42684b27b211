"""The serial console: an interactive session on a real pty, and piped input."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time

from .conftest import CORRAL, Daemon


def read_until(fd: int, marker: bytes, within: float) -> bytes:
    """Read the terminal until ``marker``, answering the shell's cursor-position queries
    (ESC[6n) as a real terminal does: busybox ash's line editor waits for the answer, and
    typing into that wait would be read as the answer."""
    seen = b""
    deadline = time.monotonic() + within
    while marker not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            seen += chunk
            for _ in range(chunk.count(b"\x1b[6n")):
                os.write(fd, b"\x1b[1;1R")
    return seen


def test_interactive_console_and_detach(daemon: Daemon, make_vm: object) -> None:
    daemon.client.create("con", start=True, wait=True)
    daemon.wait_serial("con", "GUEST-READY")
    pid, fd = pty.fork()
    if pid == 0:  # the child is a user at a terminal
        os.execve(CORRAL, [CORRAL, "console", "con"], daemon.env)
    try:
        read_until(fd, b"Ctrl-]", 10)
        read_until(fd, b"\x1b[6n", 5)  # the prompt our attach asked for
        os.write(fd, b"echo marker$((6*7))\r")
        out = read_until(fd, b"marker42", 10)
        assert b"marker42" in out, out
        os.write(fd, b"\x1d")  # Ctrl-] detaches; the VM keeps running
        assert b"Detached" in read_until(fd, b"Detached", 5)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        os.close(fd)
    assert daemon.client.get("con")["state"] == "running"
    # piped input works too (scripts), and the log has the session
    res = subprocess.run([CORRAL, "console", "con"], input="echo piped$((2+3))\n", text=True,
                         env=daemon.env, capture_output=True, timeout=20)
    assert res.returncode == 0 and "piped5" in res.stdout
    assert "marker42" in daemon.serial("con")
    daemon.client.destroy("con")


def test_console_of_stopped_vm_is_refused(daemon: Daemon) -> None:
    daemon.client.create("off")
    res = daemon.cli("console", "off")
    assert res.returncode == 5 and "it is defined" in res.stderr
    daemon.client.destroy("off")
