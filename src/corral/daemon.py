"""``corral serve``: the daemon that owns the store, the QMP connections and the VMs.

It listens on a unix socket (mode 0600); with ``--listen ADDR:PORT`` (``api.listen``) it
serves the same API over TLS with tokens beside it (:mod:`corral.api.auth`,
:mod:`corral.api.tls`), and with the ``web.listen`` setting (``CORRAL_WEB_LISTEN=127.0.0.1:8470``,
loopback only) also on plain TCP for the web page. Stopping it (SIGTERM, Ctrl-C) leaves every VM
running; the next daemon re-adopts them. It removes its socket however it stops, and the
run directories' empty leftovers (``/run/corral-<tag>`` too, once no VM or network lives
there), so nothing of a removed home stays behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from pathlib import Path
from types import FrameType
from typing import Any, Literal, NoReturn, cast

from corral import settings
from corral.config import Paths, default_socket
from corral.errors import CorralError

STARTED = time.monotonic()  # this module is imported when `corral serve` starts
log = logging.getLogger(__name__)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from corral.service.manager import Manager


def _socket_in_use(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


async def serve(socket_path: Path | None = None, paths: Paths | None = None,
                listen: str | None = None) -> None:
    """Serve until SIGTERM or SIGINT. However it ends, the socket is removed, and so are
    the run directories' empty leftovers.

    The sockets are bound first (clients that connect meanwhile wait in their backlog) and
    served at once; the service opens in the background, and FastAPI and the routes are
    loaded once it is open, while the unix socket already answers the list of VMs
    (:mod:`corral.api.front`).

    :raises CorralError: when another daemon serves ``socket_path``, ``listen`` cannot be
        listened on, or the service could not open (its store, say).
    """
    paths = paths or Paths.from_env()
    listen = listen if listen is not None else str(settings.value("api.listen"))
    socket_path = socket_path or default_socket(paths.home)
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    if socket_path.exists():
        if _socket_in_use(socket_path):
            raise CorralError(f"a daemon already serves {socket_path}; stop it first")
        socket_path.unlink()
    # the TCP sockets before the unix socket: a taken port leaves nothing behind
    tls = _tcp_socket(listen) if listen else None
    try:
        tcp, url = _tcp_listener()
    except CorralError:
        if tls is not None:
            tls.close()
        raise
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(socket_path))
    # uvicorn stops on SIGTERM, then raises it again once its handler is gone: by default
    # that kills the process before any cleanup, so it must end in an exception instead
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        os.chmod(socket_path, 0o600)
        sock.listen(128)
        _quiet_disconnects(asyncio.get_running_loop())
        await _serve_api(paths, sock, tls, listen, tcp, url, str(socket_path))
    finally:
        for listener in (tls, tcp):
            if listener is not None:
                listener.close()
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()
        paths.remove_leftovers()
        signal.signal(signal.SIGTERM, previous)


async def _serve_api(paths: Paths, sock: socket.socket, tls: socket.socket | None,
                     listen: str, tcp: socket.socket | None, url: str | None,
                     socket_path: str) -> None:
    """Serve the unix socket (and the TCP listeners) until told to stop: at once, with the
    service opening in the background and the API loaded once it is open
    (:mod:`corral.api.front`)."""
    from corral.api.fastlane import Lane
    from corral.api.front import Front, Loader
    from corral.api.opening import Opening
    from corral.service.manager import Manager

    log.info("serving %.2f s after the daemon started", time.monotonic() - STARTED)
    manager, opening = Manager(paths), Opening()
    failure: list[BaseException] = []

    def failed(err: BaseException) -> None:
        failure.append(err)
        server.should_exit = True

    def build() -> list[Any]:  # on the loader's thread
        from corral.api.app import create_app
        from corral.api.web import Where

        where = Where()
        where.socket, where.url = socket_path, url
        apps = [create_app(manager, manage_lifecycle=False, where=where, opening=opening),
                create_app(manager, manage_lifecycle=False, remote=True, where=where,
                           opening=opening) if tls else None,
                create_app(manager, manage_lifecycle=False, remote=True, where=where,
                           opening=opening, loopback=True) if tcp else None]
        log.info("API loaded %.2f s after the daemon started", time.monotonic() - STARTED)
        return apps

    loader = Loader(build, failed)
    lane = Lane(manager, lambda: loader.done.is_set() and loader.error is None)
    server = _server_class()(_config(Front(manager, opening, loader, 0, lane=True, owner=True),
                                     lifespan="on", lane=lane), manager)
    extra = [_serve_tls(server, manager, Front(manager, opening, loader, 1), paths, tls,
                        listen)] if tls else []
    if tcp is not None:  # the page's loopback listener: same-origin requests only
        extra.append(_Remote(server, _config(Front(manager, opening, loader, 2)), tcp))
    try:
        await server.serve(sockets=[sock])
    finally:
        server.should_exit = True  # a listener still waiting to start gives up
        for listener in extra:
            await listener.stop()
    if failure:  # one line and its exit code (a bad setting, a cluster that refuses us)
        if isinstance(failure[0], CorralError):
            raise failure[0]
        raise CorralError(f"the daemon could not open: {failure[0]}") from failure[0]


def _config(app: Any, lifespan: Literal["on", "off"] = "off",
            tls: tuple[str, str] | None = None, lane: Any = None) -> Any:
    """The uvicorn configuration of one listener (``lifespan`` "on": the one that opens
    and closes the service; ``tls``: its certificate and key files); without the headers
    and proxy handling nobody here uses. A TCP listener's graceful shutdown is bounded:
    closing a TLS connection waits for the peer's close_notify, which an idle kept-alive
    client (another host's forwarding pool) never sends. ``lane``: the hot requests its
    protocol answers itself (:class:`corral.api.fastlane.Lane`; the unix socket's)."""
    import uvicorn

    from corral.api.onepiece import OnePieceHttp

    http = OnePieceHttp if lane is None else type("LaneHttp", (OnePieceHttp,), {"lane": lane})
    return uvicorn.Config(app, loop="none", http=http, lifespan=lifespan,
                          log_level="warning", access_log=False, ws=cast(Any, _websocket),
                          proxy_headers=False, server_header=False, date_header=False,
                          ssl_certfile=tls[0] if tls else None,
                          ssl_keyfile=tls[1] if tls else None,
                          timeout_graceful_shutdown=None if lifespan == "on" else 2)


def _websocket(**kwargs: Any) -> Any:
    """uvicorn's WebSocket protocol (websockets, sans-I/O) for a connection that upgrades,
    imported by the first one (the consoles): a daemon starts without it."""
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    return WebSocketsSansIOProtocol(**kwargs)


def _bind(host: str, port: int, what: str) -> socket.socket:
    """A TCP socket bound to ``host:port`` and listening.

    :raises CorralError: the port is taken or the address is not this host's.
    """
    # IPPROTO_TCP named, so that asyncio sets TCP_NODELAY on each connection (else the body
    # of an answer waits ~40 ms for the ACK of its head); set here too, accepted ones inherit
    tcp = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM,
                        socket.IPPROTO_TCP)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        tcp.bind((host, port))
        tcp.listen(128)
    except OSError as err:
        tcp.close()
        raise CorralError(f"cannot listen on {host}:{port} ({what}): {err.strerror}") from err
    return tcp


def _tcp_socket(listen: str) -> socket.socket:
    """The TCP socket of the TLS listener (``api.listen``)."""
    from corral.api.tls import parse_listen

    host, port = parse_listen(listen)
    return _bind(host, port, "api.listen")


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, which also ends the event streams when asked to stop: it waits
        for open responses to finish, and a stream would never finish by itself."""

        def __init__(self, config: uvicorn.Config, manager: Manager) -> None:
            super().__init__(config)
            self.manager = manager
            self.loop = asyncio.get_running_loop()

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            self.loop.call_soon_threadsafe(self._end_streams)

        def _end_streams(self) -> None:
            with contextlib.suppress(CorralError):  # not open: no stream to end
                self.manager.events.close()

    return Server


def _tcp_listener() -> tuple[socket.socket | None, str | None]:
    """The TCP socket of ``web.listen``, bound and listening, and the page's address there
    (None and None when not set). Plain HTTP, and, like the TLS one, every request needs a
    token (a loopback port is open to every local user, unlike the 0600 socket).

    :raises CorralError: the setting is not a loopback HOST:PORT, or the port is taken.
    """
    try:
        listen = settings.value("web.listen")
    except settings.SettingError as err:
        raise CorralError(str(err)) from err
    if listen is None:
        return None, None
    host, port = listen
    tcp = _bind(host, port, "web.listen")
    bound = tcp.getsockname()[1]
    url = f"http://[{host}]:{bound}/" if ":" in host else f"http://{host}:{bound}/"
    log.info("the web page is at %s", url)
    return tcp, url


class _Remote:
    """A TCP listener: a second uvicorn server on the same loop and manager. It leaves
    signals to the main server (which owns the app's lifespan) and starts once that one
    has started the manager's open (its requests wait for it like the main one's)."""

    def __init__(self, main: Any, config: Any, tcp: socket.socket) -> None:
        import uvicorn

        self.server = uvicorn.Server(config)
        self.task = asyncio.ensure_future(self._run(main, tcp))

    async def _run(self, main: Any, tcp: socket.socket) -> None:
        while not main.started:
            if main.should_exit:
                return
            await asyncio.sleep(0.02)
        await self.server._serve(sockets=[tcp])  # _serve: without capturing signals

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(Exception):
            await self.task


def _serve_tls(main: Any, manager: Manager, app: Any, paths: Paths, tcp: socket.socket,
               listen: str) -> _Remote:
    from corral.api.tls import ensure_certificate, fingerprint, parse_listen

    cert, key = ensure_certificate(paths.home, parse_listen(listen)[0])
    config = _config(app, tls=(str(cert), str(key)))
    manager.endpoint = (listen, fingerprint(cert.read_bytes()))  # for the cluster's peers
    logging.getLogger("corral").info(
        "serving the API over TLS on %s; certificate SHA-256 fingerprint %s", listen,
        manager.endpoint[1])
    return _Remote(main, config, tcp)


def _exit_on_signal(signum: int, _frame: FrameType | None) -> NoReturn:
    raise SystemExit(128 + signum)


def _quiet_disconnects(loop: asyncio.AbstractEventLoop) -> None:
    default = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, ctx: dict[str, object]) -> None:
        # qemu.qmp leaves a reader future behind when QEMU closes the monitor first (quit,
        # kill): that is how VMs end, not an error
        if isinstance(ctx.get("exception"), EOFError | ConnectionResetError):
            return
        if default is not None:
            default(loop, ctx)
        else:
            loop.default_exception_handler(ctx)

    loop.set_exception_handler(handler)


class JsonFormatter(logging.Formatter):
    """One JSON object per log line (``--log-format json``): time, level, logger, message,
    and the exception's traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        import json

        line = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def setup_logging() -> None:
    """Log to standard error, one line per event, as the settings ``log.format`` and
    ``log.level`` say (a journal keeps standard error as it is)."""
    from corral import settings

    handler = logging.StreamHandler()
    if settings.value("log.format") == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: "
                                               "%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.value("log.level").upper())
    logging.getLogger("alembic").setLevel(logging.WARNING)


def main(socket_path: Path | None = None, listen: str | None = None) -> None:
    setup_logging()
    logging.getLogger(__name__).info("corral serve starting (configuration file: %s)",
                                     _config_name())
    asyncio.run(serve(socket_path, listen=listen))


def _config_name() -> str:
    from corral import settings

    path = settings.file_path()
    return str(path) if path else "none"
