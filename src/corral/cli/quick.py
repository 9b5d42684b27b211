"""The CLI's quickest path: ``corral list``, ``corral show NAME``, ``corral pause NAME`` and
``corral resume NAME`` (each perhaps with ``--json``, and nothing else), on this host's
daemon: the commands scripts and sandbox services run in loops.

A Python process starts in about 10 ms. ``argparse``, the Client and ``json`` (through
``re``, ``enum``, ``functools`` and ``collections``) would double that, and the request
itself takes a millisecond or two. This path imports ``os``, ``sys``, the settings (only
their file reader, and only when a configuration file sets something, brings ``tomllib``),
two C modules (``_socket`` to send one HTTP/1.1 request over the daemon's unix socket and
``_json`` to read the answer, :mod:`corral.wire_json`) and, to print, the CLI's own
:mod:`corral.cli.render`.

It answers only when it answers as the full path would (tests/unit/test_cli_lean.py runs
both): the daemon is this host's (no ``$CORRAL_URL``, no ``client.url`` setting, no
current remote), the name needs no checking or quoting, and the socket accepts the
connection. Otherwise :func:`run` returns None before anything is sent, and
:func:`corral.cli.main.main` takes the command through argparse and the Client (which then
reports a daemon that is not running, and so on). The daemon's errors are raised as the
Client raises them.
"""

from __future__ import annotations

import os
import sys
from _socket import AF_UNIX, SOCK_STREAM
from _socket import socket as unix_socket

from corral.wire_json import dumps, loads

TYPE_CHECKING = False  # typing is slow to import; the CLI must start in milliseconds
if TYPE_CHECKING:
    from typing import Any

# command word -> the request's method and what follows /vms/NAME (None: no NAME)
VERBS = {"list": ("GET", None), "show": ("GET", ""), "pause": ("POST", "/pause"),
         "resume": ("POST", "/resume")}
TIMEOUT = 300.0  # seconds, as the CLI's Client waits
# what a name may hold to go into the URL as it is (the Client checks and quotes the rest)
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
answered = False  # this path took the command (sent its request): see corral.cli.main.command


def command(argv: list[str]) -> tuple[str, str | None, bool] | None:
    """``(word, NAME or None, --json)`` of a command this path takes, else None."""
    verb = VERBS.get(argv[0]) if argv else None
    if verb is None:
        return None
    words = [a for a in argv if a != "--json"]
    named = verb[1] is not None
    if len(words) != 1 + named:
        return None
    name = words[1] if named else None
    if name is not None and not (len(name) <= 255 and _PLAIN.issuperset(name)
                                 and not name.startswith("-")):
        return None  # an option, an empty or odd name: argparse and the Client tell
    return words[0], name, len(words) != len(argv)


def socket_path() -> str | None:
    """This host's daemon socket as the Client finds it, or None when the CLI would use a
    remote daemon instead."""
    if os.environ.get("CORRAL_URL") or _current_remote():
        return None
    from corral import settings

    if settings.value("client.url"):
        return None
    return settings.socket_file()


def _current_remote() -> bool:
    """A remote is chosen with ``corral remote switch`` (what :func:`corral.remote.current`
    reads, without importing :mod:`json`)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"),
                                                             ".config")
    try:
        with open(os.path.join(base, "corral", "remotes.json"), "rb") as f:
            data = loads(f.read())
    except (OSError, ValueError):
        return False  # none (a file that cannot be read names none either)
    current = data.get("current") if isinstance(data, dict) else None
    return isinstance(current, str) and current != "local"


def run(argv: list[str]) -> int | None:
    """Run ``argv`` if this path takes it (its exit status), else None, having sent nothing.

    :raises CorralError: the daemon's error, or it closed the connection or did not answer.
    """
    global answered
    cmd = command(argv)
    path = socket_path() if cmd is not None else None
    if cmd is None or path is None:
        return None
    word, name, as_json = cmd
    method, tail = VERBS[word]
    route = "/vms" if name is None else f"/vms/{name}{tail}"
    sock = unix_socket(AF_UNIX, SOCK_STREAM)
    try:
        sock.settimeout(TIMEOUT)
        try:
            sock.connect(path)
        except OSError:
            return None  # no daemon there: the Client says so, as always
        answered = True
        status, body = _exchange(sock, method, route, path)
    finally:
        sock.close()
    if status >= 400:
        from corral.wire_checks import checked

        checked(status, body)  # raises the daemon's error
    data = loads(body)
    print(dumps(data) if as_json else _human(word, data))
    sys.stdout.flush()  # here, where a reader gone is a BrokenPipeError main() answers
    return 0


def _human(word: str, data: Any) -> str:
    from corral.cli import render

    if word == "list":
        return render.vm_table(data)
    if word == "show":
        return render.vm_detail(data)
    return f"{data['name']} is {render.state(data)}"


def _exchange(sock: Any, method: str, route: str, path: str) -> tuple[int, bytes]:
    """Send the request; the answer's status and body. Failures as the Client reports them."""
    extra = "Content-Length: 0\r\n" if method == "POST" else ""
    try:
        sock.sendall(f"{method} /v1{route} HTTP/1.1\r\nHost: corral\r\n{extra}\r\n".encode())
        return _answer(sock)
    except (BrokenPipeError, ConnectionResetError) as err:
        from corral import errors

        raise errors.DaemonUnavailable(f"the Corral daemon at {path} closed the "
                                       "connection") from err
    except TimeoutError as err:
        from corral import errors

        raise errors.Timeout(f"the daemon did not answer {method} {route} in "
                             f"{TIMEOUT:g} s") from err


def _answer(sock: Any) -> tuple[int, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += _recv(sock)
    head, _, buf = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip()
               for k, _, v in (line.partition(":") for line in lines[1:])}
    status = int(lines[0].split()[1])
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            while b"\r\n" not in buf:
                buf += _recv(sock)
            size_line, _, buf = buf.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(buf) < size + 2:
                buf += _recv(sock)
            if not size:
                return status, body
            body, buf = body + buf[:size], buf[size + 2:]
    size = int(headers.get("content-length", "0"))
    while len(buf) < size:
        buf += _recv(sock)
    return status, buf[:size]


def _recv(sock: Any) -> bytes:
    chunk: bytes = sock.recv(65536)
    if not chunk:
        raise ConnectionResetError("the daemon closed the connection")
    return chunk
