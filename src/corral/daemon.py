"""``corral serve``: the daemon that owns the store, the QMP connections and the VMs.

It listens on a unix socket (mode 0600). Stopping it (SIGTERM, Ctrl-C) leaves every VM
running; the next daemon re-adopts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from pathlib import Path

from corral.config import Paths, default_socket
from corral.errors import CorralError


def _socket_in_use(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


async def serve(socket_path: Path | None = None, paths: Paths | None = None) -> None:
    import uvicorn

    from corral.api.app import create_app
    from corral.service.manager import Manager

    paths = paths or Paths.from_env()
    socket_path = socket_path or default_socket(paths.home)
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    if socket_path.exists():
        if _socket_in_use(socket_path):
            raise CorralError(f"a daemon already serves {socket_path}; stop it first")
        socket_path.unlink()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(socket_path))
    os.chmod(socket_path, 0o600)
    sock.listen(128)
    loop = asyncio.get_running_loop()
    default = loop.get_exception_handler()

    def quiet_disconnects(loop: asyncio.AbstractEventLoop, ctx: dict[str, object]) -> None:
        # qemu.qmp leaves a reader future behind when QEMU closes the monitor first (quit,
        # kill): that is how VMs end, not an error
        if isinstance(ctx.get("exception"), EOFError | ConnectionResetError):
            return
        if default is not None:
            default(loop, ctx)
        else:
            loop.default_exception_handler(ctx)

    loop.set_exception_handler(quiet_disconnects)
    manager = Manager(paths)
    app = create_app(manager)
    config = uvicorn.Config(app, loop="none", http="httptools", lifespan="on",
                            log_level="warning", access_log=False, ws="none")
    server = uvicorn.Server(config)
    try:
        await server.serve(sockets=[sock])
    finally:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()


def main(socket_path: Path | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    asyncio.run(serve(socket_path))
