"""HTTP answers that leave in one piece.

uvicorn writes an answer's status line and headers as soon as the app starts it, and the
body when the app sends it: two writes, two ``send()`` calls, and a client that wakes for
the head, finds no body and sleeps again until the rest arrives. On a busy host each
wake-up is a trip through the scheduler, which costs more than making the answer. The
protocol here holds what is written during one turn of the event loop and sends it at the
end of that turn, or as soon as the answer is whole, or before the connection closes: an
answer made at once (every JSON answer) leaves in one ``send()``; a streamed one (events,
downloads) still leaves as it is made, at most a turn of the loop later.

A protocol given a :class:`~corral.api.fastlane.Lane` (the unix socket's) lets it answer the
hot requests it takes, between two requests uvicorn parses: a request that arrives while
the lane answers one waits for that answer, as a pipelined request waits in uvicorn.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

if TYPE_CHECKING:
    from corral.api.fastlane import Lane


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

    def send(self, data: bytes) -> None:
        """Send what is held and ``data`` at once, in one write (a whole answer)."""
        self._held.append(data)
        self.flush()

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
    moment it is whole (not after what the request's task does next: its audit record).
    With a :attr:`lane`, the hot requests it takes are answered by it."""

    lane: Lane | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.held = _Held(transport)
        self.parsing = False  # uvicorn's parser is inside a request
        self.hot: asyncio.Task[None] | None = None  # the lane's answer being made
        self.later: list[bytes] = []  # what arrived meanwhile
        self.closing = False  # close once the lane's answer is sent
        super().connection_made(self.held)  # type: ignore[arg-type]

    def on_response_complete(self) -> None:
        self.held.flush()
        super().on_response_complete()

    def on_message_begin(self) -> None:
        self.parsing = True
        super().on_message_begin()

    def on_message_complete(self) -> None:
        self.parsing = False
        super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        if self.hot is not None:
            self.later.append(data)
            return
        lane = self.lane
        if lane is not None and not self.parsing and not self.pipeline and \
                (self.cycle is None or self.cycle.response_complete):
            request = lane.take(data)
            if request is not None:
                self._unset_keepalive_if_required()
                if lane.serve_now(request, self.held.send):  # (a list)
                    self.server_state.total_requests += 1
                    self._after()
                    return
                self.hot = self.loop.create_task(self._answer(lane, request))
                self.server_state.tasks.add(self.hot)  # a graceful shutdown waits for it
                return
        super().data_received(data)

    async def _answer(self, lane: Lane, request: Any) -> None:
        try:
            await lane.serve(request, self.held.send)
        finally:
            self.server_state.tasks.discard(self.hot)
            self.server_state.total_requests += 1
            self.hot = None
            self._after()

    def _after(self) -> None:
        """After the lane's answer: close if asked meanwhile, else take what arrived meanwhile
        or wait for the next request as uvicorn does (its keep-alive timeout)."""
        if self.held.is_closing():
            return
        if self.closing:
            self.held.close()
        elif self.later:
            data = b"".join(self.later)
            self.later.clear()
            self.data_received(data)
        else:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def shutdown(self) -> None:
        if self.hot is not None:  # closed once its answer is sent
            self.closing = True
            return
        super().shutdown()
