"""The identity of a QEMU to adopt: it holds the unix socket bound to its monitor's path.
``/proc/net/unix`` is read once for many questions, and a socket made since is still seen."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from corral.engine.qemu.process import holds_socket


def _listening(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.listen(1)
    return s


def test_a_socket_is_held_until_closed_and_one_made_since_is_seen(tmp_path: Path) -> None:
    first, second = tmp_path / "a.sock", tmp_path / "b.sock"
    a = _listening(first)
    try:
        assert holds_socket(os.getpid(), first)
        assert not holds_socket(os.getpid(), second)  # nothing there yet
        b = _listening(second)  # made after the table was read
        try:
            assert holds_socket(os.getpid(), second)
            assert holds_socket(os.getpid(), first)
        finally:
            b.close()
    finally:
        a.close()
    assert not holds_socket(os.getpid(), first)  # closed: no longer held
    first.unlink()
    again = _listening(first)  # the same path, another socket
    try:
        assert holds_socket(os.getpid(), first)
        assert not holds_socket(1, first)  # another process does not hold it
    finally:
        again.close()
