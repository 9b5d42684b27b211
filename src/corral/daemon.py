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
from pathlib import Path
from types import FrameType
from typing import NoReturn

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
    """Serve until SIGTERM or SIGINT. However it ends, the socket is removed, and so are
    the run directories' empty leftovers.

    :raises CorralError: when another daemon serves ``socket_path``.
    """
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
    # uvicorn stops on SIGTERM, then raises it again once its handler is gone: by default
    # that kills the process before any cleanup, so it must end in an exception instead
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        os.chmod(socket_path, 0o600)
        sock.listen(128)
        _quiet_disconnects(asyncio.get_running_loop())
        manager = Manager(paths)
        config = uvicorn.Config(create_app(manager), loop="none", http="httptools",
                                lifespan="on", log_level="warning", access_log=False,
                                ws="none")
        await uvicorn.Server(config).serve(sockets=[sock])
    finally:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()
        paths.remove_leftovers()
        signal.signal(signal.SIGTERM, previous)


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


def main(socket_path: Path | None = None) -> None:
    setup_logging()
    logging.getLogger(__name__).info("corral serve starting (configuration file: %s)",
                                     _config_name())
    asyncio.run(serve(socket_path))


def _config_name() -> str:
    from corral import settings

    path = settings.file_path()
    return str(path) if path else "none"
