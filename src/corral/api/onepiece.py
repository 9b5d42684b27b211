"""HTTP answers that leave in one piece.

uvicorn writes an answer's status line and headers as soon as the app starts it, and the
body when the app sends it: two writes, two ``send()`` calls, and a client that wakes for
the head, finds no body and sleeps again until the rest arrives. On a busy host each
wake-up is a trip through the scheduler, which costs more than making the answer. The
protocol here holds what is written during one turn of the event loop and sends it at the
end of that turn, or as soon as the answer is whole, or before the connection closes: an
answer made at once (every JSON answer) leaves in one ``send()``; a streamed one (events,
downloads) still leaves as it is made, at most a turn of the loop later.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _Held:
    """A transport whose writes wait for the end of the loop's turn, then go together."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._held: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(data)

    def writelines(self, lines: Any) -> None:  # (in order with write)
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        if self._held:
            data = b"".join(self._held)
            self._held.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:  # everything else is the transport's own
        return getattr(self._transport, name)


class OnePieceHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing through :class:`_Held`; an answer is sent the
    moment it is whole (not after what the request's task does next: its audit record)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.held = _Held(transport)
        super().connection_made(self.held)  # type: ignore[arg-type]

    def on_response_complete(self) -> None:
        self.held.flush()
        super().on_response_complete()
