"""``corral serve``: the daemon that owns the store, the QMP connections and the VMs.

It listens on a unix socket (mode 0600). Stopping it (SIGTERM, Ctrl-C) leaves every VM
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
from typing import NoReturn

from corral.config import Paths, default_socket
from corral.errors import CorralError

STARTED = time.monotonic()  # this module is imported when `corral serve` starts
log = logging.getLogger(__name__)


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

    The socket is bound first (clients that connect meanwhile wait in its backlog), then
    the API is loaded and served; the service opens in the background, and requests wait
    for it (:mod:`corral.api.opening`), so re-adopting many VMs does not delay the answer.

    :raises CorralError: when another daemon serves ``socket_path``, or the service could
        not open (its store, say).
    """
    paths = paths or Paths.from_env()
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
        await _serve_api(paths, sock)
    finally:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()
        paths.remove_leftovers()
        signal.signal(signal.SIGTERM, previous)


async def _serve_api(paths: Paths, sock: socket.socket) -> None:
    import uvicorn

    from corral.api.app import create_app
    from corral.service.manager import Manager

    log.info("API loaded %.2f s after the daemon started", time.monotonic() - STARTED)
    failure: list[BaseException] = []

    def failed(err: BaseException) -> None:
        failure.append(err)
        server.should_exit = True

    config = uvicorn.Config(create_app(Manager(paths), on_failure=failed), loop="none",
                            http="httptools", lifespan="on", log_level="warning",
                            access_log=False, ws="none", proxy_headers=False,
                            server_header=False, date_header=False)
    server = uvicorn.Server(config)
    await server.serve(sockets=[sock])
    if failure:
        if isinstance(failure[0], CorralError):
            raise failure[0]
        raise CorralError(f"the daemon could not open: {failure[0]}") from failure[0]


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
