"""``corral serve``: the daemon that owns the store, the QMP connections and the VMs.

It listens on a unix socket (mode 0600) and, with ``--listen ADDR:PORT`` (``api.listen``),
serves the same API over TLS with tokens beside it (:mod:`corral.api.auth`,
:mod:`corral.api.tls`). Stopping it (SIGTERM, Ctrl-C) leaves every VM
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
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from corral import settings
from corral.config import Paths, default_socket
from corral.errors import CorralError


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

    :raises CorralError: when another daemon serves ``socket_path``, or ``listen`` cannot
        be listened on.
    """
    import uvicorn

    from corral.api.app import create_app
    from corral.service.manager import Manager

    paths = paths or Paths.from_env()
    listen = listen if listen is not None else str(settings.value("api.listen"))
    tcp = _tcp_socket(listen) if listen else None
    socket_path = socket_path or default_socket(paths.home)
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    if socket_path.exists():
        if _socket_in_use(socket_path):
            raise CorralError(f"a daemon already serves {socket_path}; stop it first")
        socket_path.unlink()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(socket_path))
    # uvicorn stops on SIGTERM, then raises it again once its handler is gone: by default
    # that kills the process before any cleanup, so it must end in an exception instead
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        os.chmod(socket_path, 0o600)
        sock.listen(128)
        _quiet_disconnects(asyncio.get_running_loop())
        manager = Manager(paths)
        config = uvicorn.Config(create_app(manager, manage_lifecycle=False), loop="none",
                                http="httptools", lifespan="off", log_level="warning",
                                access_log=False, ws="none")
        main = uvicorn.Server(config)
        remote = _serve_tls(main, manager, paths, tcp, listen) if tcp else None
        try:
            # opened here, not in the app's lifespan: a refusal (a setting that does not
            # parse, a cluster that refuses this host) ends the command in one line
            await manager.open()
            try:
                await main.serve(sockets=[sock])
            finally:
                await manager.close()
        finally:
            main.should_exit = True
            if remote is not None:
                await remote.stop()
    finally:
        if tcp is not None:
            tcp.close()
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()
        paths.remove_leftovers()
        signal.signal(signal.SIGTERM, previous)


def _tcp_socket(listen: str) -> socket.socket:
    from corral.api.tls import parse_listen

    host, port = parse_listen(listen)
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
        raise CorralError(f"cannot listen on {listen}: {err.strerror}") from err
    return tcp


class _Remote:
    """The TLS listener: a second uvicorn server on the same loop and manager. It leaves
    signals to the main server (which owns the app's lifespan) and starts once that one
    has opened the manager."""

    def __init__(self, main: Any, server: Any, tcp: socket.socket) -> None:
        self.server = server
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


def _serve_tls(main: Any, manager: Any, paths: Paths, tcp: socket.socket,
               listen: str) -> _Remote:
    import uvicorn

    from corral.api.app import create_app
    from corral.api.tls import ensure_certificate, fingerprint, parse_listen

    cert, key = ensure_certificate(paths.home, parse_listen(listen)[0])
    config = uvicorn.Config(create_app(manager, manage_lifecycle=False, remote=True),
                            loop="none", http="httptools", lifespan="off",
                            log_level="warning", access_log=False, ws="none",
                            ssl_certfile=str(cert), ssl_keyfile=str(key),
                            # closing a TLS connection waits for the peer's close_notify,
                            # which an idle kept-alive client (another host's forwarding
                            # pool) never sends: do not wait the 30 s of asyncio for it
                            timeout_graceful_shutdown=2)
    manager.endpoint = (listen, fingerprint(cert.read_bytes()))  # for the cluster's peers
    logging.getLogger("corral").info(
        "serving the API over TLS on %s; certificate SHA-256 fingerprint %s", listen,
        manager.endpoint[1])
    return _Remote(main, uvicorn.Server(config), tcp)


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


def main(socket_path: Path | None = None, listen: str | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    asyncio.run(serve(socket_path, listen=listen))
