"""What the Client puts on the wire: HTTP/1.1 over the daemon's unix socket, or over TLS to
a remote daemon (``https://HOST:PORT`` with a token), and :class:`Connection`, the base of
``corral.Client`` (one REST call in, decoded JSON or the daemon's error out). The checks
every name and number passes before it is sent are :mod:`corral.wire_checks`'s.

Standard library only; importing it costs milliseconds (``ssl`` is imported only when a
remote is used: :mod:`corral.remote`).
"""

from __future__ import annotations

import json
import os

# the C module itself: ``socket`` wraps it in enums and helpers that cost the CLI more to
# import than a request takes (a TLS socket from corral.remote is a full socket.socket)
from _socket import AF_UNIX, SOCK_STREAM
from _socket import socket as unix_socket

from corral import errors
from corral.wire_checks import MAX_TIMEOUT, checked, error, integer, seconds, seg, url_of

__all__ = ["MAX_TIMEOUT", "Connection", "Transport", "error", "integer", "seconds",
           "seg"]

TYPE_CHECKING = False  # typing is slow to import; the CLI must start in milliseconds
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Iterator
    from pathlib import Path
    from typing import Any, BinaryIO, Self

    Progress = Callable[[int, int], None]  # (bytes done, bytes in all)

CHUNK = 1 << 20  # uploads and downloads move in pieces this big


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
        if self.sock is None:
            self.sock = self.tls.connect(self.timeout) if self.tls is not None else self._unix()
        return self.sock

    def _unix(self) -> socket.socket:
        sock = unix_socket(AF_UNIX, SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        return sock  # type: ignore[return-value]  # the C socket: the same methods

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
        status, headers = self._read_head()
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
        status, headers = self._read_head()
        data = self._read_body(headers)
        self.last_headers = headers
        return status, data

    def _read_head(self) -> tuple[int, dict[str, str]]:
        lines = self._read_until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(":") for line in lines[1:])}
        return status, headers

    def _read_body(self, headers: dict[str, str]) -> bytes:
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
        return data

    def send_file(self, method: str, url: str, source: BinaryIO, size: int,
                  progress: Progress | None = None) -> tuple[int, bytes]:
        """Send ``size`` bytes of ``source`` as the body, as they are read (never all in
        memory); the daemon's answer. An answer that comes early (a 413 once the daemon has
        seen the length) is read even though the rest of the body is not sent.

        :raises OSError: ``source`` ended before ``size`` bytes.
        """
        sock = self._connect()
        sock.sendall(f"{method} {url} HTTP/1.1\r\nHost: corral\r\n{self.headers}Content-Type: "
                     f"application/octet-stream\r\nContent-Length: {size}\r\n\r\n".encode())
        sent = 0
        try:
            while sent < size:
                chunk = source.read(min(CHUNK, size - sent))
                if not chunk:
                    raise OSError(f"the file ended after {sent} of {size} bytes")
                sock.sendall(chunk)
                sent += len(chunk)
                if progress:
                    progress(sent, size)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon answered before the end: read why below
        status, headers = self._read_head()
        data = self._read_body(headers)
        if sent < size:  # the connection cannot carry another request
            self.close()
        return status, data

    def receive_file(self, method: str, url: str, sink: BinaryIO,
                     progress: Progress | None = None) -> tuple[int, dict[str, str], bytes]:
        """Send a bodiless request; write a successful answer's body into ``sink`` as it
        arrives. Returns the status, the headers and (for an error) the body.

        :raises ConnectionResetError: the answer ended before its ``Content-Length``.
        """
        sock = self._connect()
        extra = "Content-Length: 0\r\n" if method in ("POST", "PUT") else ""
        sock.sendall(f"{method} {url} HTTP/1.1\r\nHost: corral\r\n{self.headers}{extra}\r\n"
                     .encode())
        status, headers = self._read_head()
        if status >= 400 or "content-length" not in headers:
            return status, headers, self._read_body(headers)
        size = int(headers["content-length"])
        done = 0
        try:
            while done < size:
                if self._buf:
                    chunk, self._buf = self._buf[:size - done], self._buf[size - done:]
                else:
                    chunk = self._recv(min(CHUNK, size - done))
                sink.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, size)
        except BaseException:
            self.close()  # the rest of the answer is still on the wire
            raise
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, b""

    def _recv(self, n: int) -> bytes:
        assert self.sock is not None
        chunk = self.sock.recv(n)
        if not chunk:
            raise ConnectionResetError("the daemon closed the connection before the end")
        return chunk


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
        else:
            self.socket_path = settings.socket_file()
        if token:
            if any(ord(c) < 33 or ord(c) > 126 for c in token):
                raise errors.InvalidSpec("token", "a token is printable ASCII without spaces")
            headers += f"Authorization: Bearer {token}\r\n"
        self._conn = Transport(self.socket_path, timeout, tls, headers)

    def close(self) -> None:
        self._conn.close()

    def unavailable(self, err: OSError | None = None) -> errors.DaemonUnavailable:
        if isinstance(err, PermissionError):  # the unix socket is 0600: its owner's alone
            return errors.DaemonUnavailable(f"no permission to use {self.socket_path}; run "
                                            "as the daemon's user, or use a remote and token")
        if self.url is not None:
            return errors.DaemonUnavailable(f"no Corral daemon answers at {self.url}; is it "
                                            "serving with --listen?")
        return errors.DaemonUnavailable(
            f"the Corral daemon is not running at {self.socket_path}; start it with "
            "'corral serve' (or set CORRAL_SOCKET)")

    def __enter__(self) -> Self:  # (a Client's ``with`` gives the Client)
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
                raise self.unavailable(err) from err
        raise AssertionError("unreachable")

    def raw_request(self, method: str, route: str, payload: bytes | None = None,
                    content_type: str = "application/json", **query: Any) -> bytes:
        """One REST call with a raw body; returns the raw response body."""
        url = url_of(route, query)
        for attempt in (1, 2):  # a kept-alive connection the daemon closed is retried once
            fresh = self._conn.sock is None
            try:
                with self._failures(method, route, retry=not fresh and attempt == 1):
                    status, data = self._conn.request(method, url, payload, content_type)
                    break
            except _Retry:
                continue
        return checked(status, data)

    def send_file(self, route: str, source: BinaryIO, size: int,
                  progress: Progress | None = None, **query: Any) -> bytes:
        """POST ``size`` bytes of ``source`` as they are read; returns the answer's body."""
        self.close()  # a fresh connection: a body half-sent cannot be sent again
        with self._failures("POST", route):
            status, data = self._conn.send_file("POST", url_of(route, query), source, size,
                                                progress)
        return checked(status, data)

    def receive_file(self, method: str, route: str, sink: BinaryIO,
                     progress: Progress | None = None, **query: Any) -> dict[str, str]:
        """Write the answer's body into ``sink`` as it arrives; returns its headers.

        :raises DaemonUnavailable: the answer ended short (the daemon failed half-way).
        """
        self.close()
        with self._failures(method, route):
            status, headers, data = self._conn.receive_file(method, url_of(route, query), sink,
                                                            progress)
        checked(status, data)
        return headers

    def _failures(self, method: str, route: str, retry: bool = False) -> _Failures:
        """Socket failures as Corral's errors (``retry``: a closed kept-alive connection
        raises :class:`_Retry` instead)."""
        return _Failures(self, method, route, retry)


class _Failures:
    """Socket failures as Corral's errors (a class: the CLI does not import contextlib)."""

    def __init__(self, conn: Connection, method: str, route: str, retry: bool) -> None:
        self.conn, self.method, self.route, self.retry = conn, method, route, retry

    def __enter__(self) -> None:
        return None

    def __exit__(self, _kind: object, err: BaseException | None, _tb: object) -> None:
        conn = self.conn
        if isinstance(err, (FileNotFoundError, ConnectionRefusedError, PermissionError)):
            conn.close()
            raise conn.unavailable(err) from err
        if isinstance(err, (BrokenPipeError, ConnectionResetError)):
            conn.close()
            if self.retry:
                raise _Retry from err
            raise errors.DaemonUnavailable(
                f"the Corral daemon at {conn.socket_path} closed the connection") from err
        if isinstance(err, TimeoutError):
            conn.close()
            raise errors.Timeout(f"the daemon did not answer {self.method} {self.route} in "
                                 f"{conn.timeout:g} s") from err


class _Retry(Exception):
    """A kept-alive connection the daemon had closed: send the request again."""
