"""``corral serve``: the daemon that owns the store, the QMP connections and the VMs.

It listens on a unix socket (mode 0600) and, with the ``web.listen`` setting
(``CORRAL_WEB_LISTEN=127.0.0.1:8470``, loopback only), also on TCP for the web page and the
same API. Stopping it (SIGTERM, Ctrl-C) leaves every VM
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
from typing import NoReturn

from corral.config import Paths, default_socket
from corral.errors import CorralError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from corral.api.web import Where
    from corral.service.manager import Manager


def _socket_in_use(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


async def serve(socket_path: Path | None = None, paths: Paths | None = None) -> None:
    """Serve until SIGTERM or SIGINT. However it ends, the socket is removed, and so are
    the run directories' empty leftovers.

    :raises CorralError: when another daemon serves ``socket_path``.
    """
    import uvicorn

    from corral.api.app import create_app
    from corral.api.web import Where
    from corral.service.manager import Manager

    paths = paths or Paths.from_env()
    socket_path = socket_path or default_socket(paths.home)
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    if socket_path.exists():
        if _socket_in_use(socket_path):
            raise CorralError(f"a daemon already serves {socket_path}; stop it first")
        socket_path.unlink()
    where = Where()
    where.socket = str(socket_path)
    tcp = _tcp_listener(where)  # before the unix socket: a taken port leaves nothing behind
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
        config = uvicorn.Config(create_app(manager, where=where), loop="none",
                                http="httptools", lifespan="on", log_level="warning",
                                access_log=False, ws="websockets-sansio")
        server = _server_class()(config, manager)
        await server.serve(sockets=[sock, *([tcp] if tcp else [])])
    finally:
        sock.close()
        if tcp is not None:
            tcp.close()
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()
        paths.remove_leftovers()
        signal.signal(signal.SIGTERM, previous)


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


def _tcp_listener(where: Where) -> socket.socket | None:
    """The TCP socket of ``web.listen``, bound and listening (None when not set).

    :raises CorralError: the setting is not a loopback HOST:PORT, or the port is taken.
    """
    from corral import settings

    try:
        listen = settings.value("web.listen")
    except settings.SettingError as err:
        raise CorralError(str(err)) from err
    if listen is None:
        return None
    host, port = listen
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    tcp = socket.socket(family, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit it: a response's head and body go out at once instead
    # of the body waiting for the client's delayed ACK (40 ms a request)
    tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        tcp.bind((host, port))
        tcp.listen(128)
    except OSError as err:
        tcp.close()
        raise CorralError(f"cannot listen on {host}:{port}: {err.strerror}") from err
    bound = tcp.getsockname()[1]
    where.url = f"http://[{host}]:{bound}/" if family == socket.AF_INET6 else \
        f"http://{host}:{bound}/"
    logging.getLogger(__name__).info("the web page is at %s", where.url)
    return tcp


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


def main(socket_path: Path | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    asyncio.run(serve(socket_path))
