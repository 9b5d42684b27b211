"""An interactive serial console: the terminal in raw mode, bytes both ways, Ctrl-] detaches."""

from __future__ import annotations

import os
import select
import socket
import sys
import termios
import tty

from corral.errors import CorralError

DETACH = b"\x1d"  # Ctrl-]
CURSOR_QUERY, CURSOR_REPLY = b"\x1b[6n", b"\x1b[1;1R"  # "where is the cursor?" and an answer


def attach(path: str, name: str) -> int:
    """:raises CorralError: when the console socket cannot be reached."""
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.connect(path)
    except OSError as err:
        raise CorralError(f"cannot reach the console of '{name}': {err.strerror}") from err
    stdin = sys.stdin.fileno()
    interactive = os.isatty(stdin)
    saved = termios.tcgetattr(stdin) if interactive else None
    if interactive:
        sys.stderr.write(f"Connected to {name}'s console; Ctrl-] to detach.\r\n")
        tty.setraw(stdin)
        sock.sendall(b"\r")
    inputs = [stdin, sock]
    try:
        while True:
            # piped input: once it ends, print what the guest still says for a moment
            ready, _, _ = select.select(inputs, [], [], None if stdin in inputs else 1.0)
            if not ready:
                break
            if sock in ready:
                data = sock.recv(65536)
                if not data:
                    break
                os.write(sys.stdout.fileno(), data)
                if not interactive:  # no terminal to answer the shell's cursor query: we do,
                    for _ in range(data.count(CURSOR_QUERY)):  # or it eats our next line
                        sock.sendall(CURSOR_REPLY)
            if stdin in ready:
                data = os.read(stdin, 1024)
                if not data:
                    inputs.remove(stdin)
                    continue
                if interactive and DETACH in data:
                    sock.sendall(data.split(DETACH, 1)[0])
                    break
                sock.sendall(data)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
            sys.stderr.write("\r\nDetached.\n")
        sock.close()
    return 0
