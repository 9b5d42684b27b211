"""A real daemon for the front-door tests: ``corral serve``'s app in a subprocess on a temp
``CORRAL_HOME``, listening on its unix socket and, on a loopback TCP port, the app of the
remote listener (every request needs a token; plain HTTP: TLS is the daemon's transport, the
token is the app's) for HTTP tools such as schemathesis. No QEMU is started by these tests:
the only image is a stub.

Run as a script it serves ``HOME`` (``python served.py HOME PORT``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Served:
    home: Path
    socket: Path
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        """The daemon still answers, on both of its doors."""
        from corral.client import Client

        with Client(self.socket, timeout=10) as c:
            info = c.host_info()
        return self.proc.poll() is None and info["cpus"] >= 1


def stub_image(home: Path) -> None:
    images = home / "images" / "tiny"
    images.mkdir(parents=True)
    (images / "vmlinux").write_bytes(b"\x7fELF")
    (images / "image.json").write_text(json.dumps(
        {"name": "tiny", "kernel": "vmlinux", "cmdline": "console=ttyS0", "agent": True}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def served(home: Path) -> Iterator[Served]:
    """Serve a fresh ``home`` (with the stub image) until the block ends."""
    stub_image(home)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "CORRAL_IMAGE_PATH"}
    env["CORRAL_HOME"] = str(home)
    env["CORRAL_API_RATE"] = "100000"  # a fuzzer may go as fast as it can
    env["CORRAL_API_BURST"] = "100000"
    proc = subprocess.Popen([sys.executable, __file__, str(home), str(port)], env=env,
                            stderr=subprocess.PIPE)
    sock = home / "corral.sock"
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"the test daemon did not start: {err[-2000:]}")
            time.sleep(0.05)
        yield Served(home, sock, port, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


async def _serve(home: Path, port: int) -> None:
    import uvicorn

    from corral.api.app import create_app
    from corral.api.onepiece import OnePieceHttp  # the daemon's own protocol
    from corral.config import Paths
    from corral.service.manager import Manager

    tcp = socket.socket()
    tcp.bind(("127.0.0.1", port))
    tcp.listen(64)
    path = home / "corral.sock"
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(path) + ".tmp")
    unix.listen(64)
    os.rename(str(path) + ".tmp", path)  # the socket appears once it listens
    manager = Manager(Paths(home))
    config = uvicorn.Config(create_app(manager), loop="none", http=OnePieceHttp,
                            lifespan="on", log_level="warning", access_log=False, ws="none")
    remote = uvicorn.Config(create_app(manager, manage_lifecycle=False, remote=True),
                            loop="none", http=OnePieceHttp, lifespan="off", log_level="warning",
                            access_log=False, ws="none")
    main, tokens = uvicorn.Server(config), uvicorn.Server(remote)

    async def second() -> None:
        while not main.started:
            await asyncio.sleep(0.02)
        await tokens._serve(sockets=[tcp])

    task = asyncio.ensure_future(second())
    try:
        await main.serve(sockets=[unix])
    finally:
        tokens.should_exit = True
        await task


if __name__ == "__main__":
    asyncio.run(_serve(Path(sys.argv[1]), int(sys.argv[2])))
