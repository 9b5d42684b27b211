"""What the Client puts on the wire: HTTP/1.1 over the daemon's unix socket, or over TLS to
a remote daemon (``https://HOST:PORT`` with a token), the checks every name and number
passes before it is sent, and :class:`Connection`, the base of ``corral.Client`` (one REST
call in, decoded JSON or the daemon's error out).

Standard library only; importing it costs milliseconds (``ssl`` is imported only when a
remote is used: :mod:`corral.remote`).
"""

from __future__ import annotations

import json
import os
import socket

from corral import errors

TYPE_CHECKING = False  # typing is slow to import; the CLI must start in milliseconds
if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path
    from typing import Any

MAX_TIMEOUT = 86400.0  # the daemon refuses longer waits
# what a path segment may hold unquoted (every valid name): the hot path skips urllib
_UNRESERVED = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~")


def error(status: int, body: dict[str, Any]) -> errors.CorralError:
    return errors.from_dict(body, status)


def seg(name: object, field: str = "name") -> str:
    """``name`` as one URL path segment: checked, then percent-quoted, so that no name can
    reach another route or smuggle a second request (CR/LF).

    :raises InvalidSpec: an empty name, a control character, ``/``, ``.`` or ``..``.
    """
    if not isinstance(name, str) or not name:
        raise errors.InvalidSpec(field, "give a name")
    if len(name) > 255 or name in (".", "..") or "/" in name or \
            any(ord(c) < 32 or ord(c) == 127 for c in name):
        shown = name if len(name) <= 40 else name[:40] + "…"
        raise errors.InvalidSpec(field, f"{shown!r} is not a valid name; use 1-32 lowercase "
                                        "letters, digits and '-', starting with a letter or "
                                        "digit")
    if _UNRESERVED.issuperset(name):
        return name
    import urllib.parse

    return urllib.parse.quote(name, safe="")


def seconds(value: float | None, field: str = "timeout") -> float | None:
    """:raises InvalidSpec: unless ``value`` is None or a finite number in (0, a day]."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not 0 < value <= MAX_TIMEOUT:  # NaN fails every comparison
        raise errors.InvalidSpec(field, f"{value!r} is not a number of seconds in "
                                        f"(0, {MAX_TIMEOUT:g}]")
    return float(value)


def integer(value: int | None, field: str, low: int, high: int) -> int | None:
    """:raises InvalidSpec: unless ``value`` is None or an integer in [low, high]."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise errors.InvalidSpec(field, f"{value!r} is not an integer in [{low}, {high}]")
    return value


class Transport:
    """HTTP/1.1 over a unix socket (or, with ``tls``, over TLS to ``host:port``), kept
    alive. Hand-written because ``http.client`` pulls in the ``email`` package, which alone
    costs the CLI more than its whole time budget. ``headers``: sent with every request
    (the token, the project)."""

    def __init__(self, path: str, timeout: float | None, tls: Any = None,
                 headers: str = "") -> None:
        self.path = path
        self.timeout = timeout
        self.tls = tls  # a corral.remote.Remote: connects and checks the certificate
        self.headers = headers
        self.sock: socket.socket | None = None
        self._buf = b""
        self.last_headers: dict[str, str] = {}  # of the last answer

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self._buf = b""

    def __del__(self) -> None:  # a client dropped without close() (the CLI's) closes here
        self.close()

    def _connect(self) -> socket.socket:
        if self.sock is None and self.tls is not None:
            self.sock = self.tls.connect(self.timeout)
        if self.sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.path)
            except OSError:
                sock.close()
                raise
            self.sock = sock
        return self.sock

    def _read_until(self, sep: bytes) -> bytes:
        assert self.sock is not None
        while sep not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("the daemon closed the connection")
            self._buf += chunk
        head, _, self._buf = self._buf.partition(sep)
        return head

    def _read_exact(self, n: int) -> bytes:
        assert self.sock is not None
        while len(self._buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self._buf)))
            if not chunk:
                raise ConnectionResetError("the daemon closed the connection")
            self._buf += chunk
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def stream_lines(self, method: str, url: str, body: bytes) -> Iterator[tuple[int, bytes]]:
        """Send a request and yield ``(status, line)`` for each line of the (chunked) answer
        as it arrives; the connection is not reused afterwards."""
        sock = self._connect()
        sock.sendall(f"{method} {url} HTTP/1.1\r\nHost: corral\r\nConnection: close\r\n"
                     f"{self.headers}Content-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        lines = self._read_until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(":") for line in lines[1:])}
        pending = b""
        try:
            if headers.get("transfer-encoding", "").lower() != "chunked":
                yield status, self._read_exact(int(headers.get("content-length", "0")))
                return
            while size := int(self._read_until(b"\r\n").split(b";")[0], 16):
                pending += self._read_exact(size)
                self._read_exact(2)
                *done, pending = pending.split(b"\n")
                for line in done:
                    yield status, line
            if pending:
                yield status, pending
        finally:
            self.close()

    def request(self, method: str, url: str, body: bytes | None,
                content_type: str = "application/json", file: Path | None = None
                ) -> tuple[int, bytes]:
        """One exchange; the body is ``body``, or the contents of ``file`` (sent as it is
        read, however large)."""
        sock = self._connect()
        head = f"{method} {url} HTTP/1.1\r\nHost: corral\r\n{self.headers}"
        if file is not None:
            head += (f"Content-Type: {content_type}\r\n"
                     f"Content-Length: {file.stat().st_size}\r\n")
        elif body is not None:
            head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        elif method in ("POST", "PUT"):
            head += "Content-Length: 0\r\n"
        sock.sendall(head.encode() + b"\r\n" + (body or b""))
        if file is not None:
            with file.open("rb") as f:
                while chunk := f.read(1 << 20):
                    sock.sendall(chunk)
        lines = self._read_until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(":") for line in lines[1:])}
        if headers.get("transfer-encoding", "").lower() == "chunked":
            data = b""
            while size := int(self._read_until(b"\r\n").split(b";")[0], 16):
                data += self._read_exact(size)
                self._read_exact(2)
            self._read_until(b"\r\n")
        else:
            data = self._read_exact(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self.close()
        self.last_headers = headers
        return status, data


class Connection:
    """One kept-alive connection to ``corral serve``. Every call raises
    :class:`~corral.errors.CorralError` subclasses; :class:`~corral.errors.DaemonUnavailable`
    when the daemon is not running."""

    def __init__(self, socket_path: str | Path | None = None,
                 timeout: float | None = 300.0, *, url: str | None = None,
                 token: str | None = None, fingerprint: str | None = None,
                 ca: str | Path | None = None, project: str | None = None) -> None:
        """The daemon on ``socket_path`` (default ``$CORRAL_SOCKET``, else
        ``$CORRAL_HOME/corral.sock``), or the remote one at ``url`` (``https://HOST:PORT``;
        default ``$CORRAL_URL`` when no socket is given) with ``token`` (``$CORRAL_TOKEN``),
        whose certificate must have the SHA-256 ``fingerprint`` or be signed by ``ca``.
        ``project``: the project this client works in (admins; a token's is its own).

        :raises InvalidSpec: a malformed url or fingerprint.
        """
        from corral import settings

        if url is None and socket_path is None:
            url = settings.value("client.url") or None
        self.timeout = timeout
        self.url = url
        headers = f"X-Corral-Project: {seg(project, 'project')}\r\n" if project else ""
        tls = None
        if url is not None:
            from corral.remote import Remote

            tls = Remote(url, fingerprint or settings.value("client.fingerprint") or None,
                         str(ca or settings.value("client.ca") or "") or None)
            token = token or settings.value("client.token") or None
            self.socket_path = url
        elif socket_path:
            self.socket_path = os.path.abspath(os.path.expanduser(socket_path))
        else:  # config (and pathlib) only when the socket must be found
            from corral.config import default_socket

            self.socket_path = str(default_socket())
        if token:
            if any(ord(c) < 33 or ord(c) > 126 for c in token):
                raise errors.InvalidSpec("token", "a token is printable ASCII without spaces")
            headers += f"Authorization: Bearer {token}\r\n"
        self._conn = Transport(self.socket_path, timeout, tls, headers)

    def close(self) -> None:
        self._conn.close()

    def unavailable(self) -> errors.DaemonUnavailable:
        if self.url is not None:
            return errors.DaemonUnavailable(f"no Corral daemon answers at {self.url}; is it "
                                            "serving with --listen?")
        return errors.DaemonUnavailable(
            f"the Corral daemon is not running at {self.socket_path}; start it with "
            "'corral serve' (or set CORRAL_SOCKET)")

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def request(self, method: str, route: str, body: Any = None, **query: Any) -> Any:
        """One REST call; returns the decoded JSON (None for 204)."""
        payload = json.dumps(body).encode() if body is not None else None
        data = self.raw_request(method, route, payload, **query)
        return json.loads(data) if data else None

    def exchange(self, method: str, url: str, payload: bytes | None, content_type: str,
                 file: Path | None = None) -> tuple[int, dict[str, str], bytes]:
        """Send one request as given (``url``: path and query) and return the answer as it
        came, errors included: (status, headers, body). For a daemon that forwards a request
        to another host's daemon.

        :raises DaemonUnavailable: no daemon answers. :raises Timeout: it did not answer.
        """
        for attempt in (1, 2):  # a kept-alive connection the daemon closed is retried once
            fresh = self._conn.sock is None
            try:
                status, data = self._conn.request(method, url, payload, content_type, file)
                return status, self._conn.last_headers, data
            except (BrokenPipeError, ConnectionResetError) as err:
                self.close()
                if fresh or attempt == 2:
                    raise self.unavailable() from err
            except TimeoutError as err:
                self.close()
                raise errors.Timeout(f"{self.socket_path} did not answer {method} in "
                                     f"{self.timeout:g} s") from err
            except OSError as err:
                self.close()
                raise self.unavailable() from err
        raise AssertionError("unreachable")

    def raw_request(self, method: str, route: str, payload: bytes | None = None,
                    content_type: str = "application/json", **query: Any) -> bytes:
        """One REST call with a raw body; returns the raw response body."""
        params = {k: (str(v).lower() if isinstance(v, bool) else v)
                  for k, v in query.items() if v is not None}
        url = "/v1" + route
        if params:
            import urllib.parse

            url += "?" + urllib.parse.urlencode(params)
        for attempt in (1, 2):  # a kept-alive connection the daemon closed is retried once
            fresh = self._conn.sock is None
            try:
                status, data = self._conn.request(method, url, payload, content_type)
                break
            except (FileNotFoundError, ConnectionRefusedError) as err:
                self.close()
                raise self.unavailable() from err
            except (BrokenPipeError, ConnectionResetError) as err:
                self.close()
                if fresh or attempt == 2:
                    raise errors.DaemonUnavailable(
                        f"the Corral daemon at {self.socket_path} closed the connection") from err
            except TimeoutError as err:
                self.close()
                raise errors.Timeout(f"the daemon did not answer {method} {route} in "
                                     f"{self.timeout:g} s") from err
        if status >= 400:
            try:  # (a 401/403/404/429 of the daemon raises its own class, see errors)
                decoded = json.loads(data) if data else {}
            except ValueError:
                decoded = {"message": data.decode(errors="replace")[:200]}
            raise error(status, decoded if isinstance(decoded, dict) else {})
        return data

