"""The serial console over a WebSocket (the web page's terminal)::

    WS  /v1/vms/NAME/console

Binary frames carry the console's bytes both ways; a text frame from the client is a JSON
control message (``{"resize": [cols, rows]}``: accepted and ignored, a serial line has no
window size; the page re-flows its terminal itself). The socket closes cleanly when the VM's
machine ends, with the VM's state and why in the close reason (code 1000); a VM without a
machine is refused the same way (code 4409, "VM 'web' is stopped"), an unknown one with 4404.
"""

from __future__ import annotations

import asyncio
import contextlib
import re

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from corral.api.names import API, NAME_PATTERN
from corral.errors import NotFound
from corral.service.manager import Manager

CHUNK = 65536
REASON_BYTES = 120  # a close reason is at most 123 bytes
GONE = 4404
NOT_RUNNING = 4409


def routes(m: Manager) -> APIRouter:
    r = APIRouter(prefix=API, tags=["console"])

    @r.websocket("/vms/{name}/console")
    async def console(ws: WebSocket, name: str) -> None:
        # the page offers "corral" (and its token, read by corral.api.auth): pick "corral"
        offered = ws.headers.get("sec-websocket-protocol", "")
        await ws.accept("corral" if "corral" in (p.strip() for p in offered.split(","))
                        else None)
        if not re.fullmatch(NAME_PATTERN, name):
            await _close(ws, GONE, f"no VM named {name[:40]!r}")
            return
        try:
            view = m.vms.view(name)
        except NotFound as err:
            await _close(ws, GONE, err.message)
            return
        path = view.get("console_socket")
        if not path:
            await _close(ws, NOT_RUNNING, f"VM '{name}' is {view['state']}")
            return
        try:
            reader, writer = await asyncio.open_unix_connection(path)
        except OSError as err:
            await _close(ws, NOT_RUNNING, f"cannot reach the console of '{name}': "
                                          f"{err.strerror}")
            return
        await _pump(m, ws, name, reader, writer)

    return r


async def _pump(m: Manager, ws: WebSocket, name: str, reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter) -> None:
    """Bytes both ways until either side ends; then close the other with the reason."""
    async def to_browser() -> None:
        while data := await reader.read(CHUNK):
            await ws.send_bytes(data)

    async def to_guest() -> None:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            if msg.get("bytes"):
                writer.write(msg["bytes"])
                await writer.drain()
            # text frames are control messages (resize): nothing to do on a serial line

    out = asyncio.create_task(to_browser())
    inp = asyncio.create_task(to_guest())
    try:
        done, _ = await asyncio.wait({out, inp}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        out.cancel()
        inp.cancel()
        writer.close()
        with contextlib.suppress(OSError, asyncio.CancelledError, WebSocketDisconnect):
            await asyncio.gather(out, inp, return_exceptions=True)
    if out in done and out.exception() is None:  # the console ended: the machine ends
        await _close(ws, 1000, await _ended(m, name))


async def _ended(m: Manager, name: str) -> str:
    """Why the console ended: the VM's state once its machine's end is recorded."""
    for _ in range(40):  # the exit reaches the daemon a moment after the socket closes
        try:
            view = m.vms.view(name)
        except NotFound:
            return f"VM '{name}' was removed"
        if not view.get("console_socket"):
            why = view.get("exit_reason")
            return f"VM '{name}' is {view['state']}" + (f": {why}" if why else "")
        await asyncio.sleep(0.05)
    return f"the console of '{name}' closed"


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError):
        await ws.close(code, reason.encode()[:REASON_BYTES].decode(errors="ignore"))
