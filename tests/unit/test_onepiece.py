"""An answer written in pieces during one turn of the event loop leaves in one send (see
corral.api.onepiece); a close sends what is held first; a closed connection gets nothing."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

from corral.api.onepiece import _Held


class Recorder(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sent.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("peer", name)


async def test_what_one_turn_writes_leaves_in_one_send() -> None:
    real = Recorder()
    held = _Held(real)
    held.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    held.write(b"{}")
    assert real.sent == []  # held until the end of the turn
    await asyncio.sleep(0)
    assert real.sent == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    held.write(b"next")  # a later turn (a streamed answer): sent at the end of that one
    await asyncio.sleep(0)
    assert real.sent[1:] == [b"next"]
    assert held.get_extra_info("peername") == ("peer", "peername")  # the rest: the transport's


async def test_a_whole_answer_sent_at_once_goes_with_what_is_held() -> None:
    real = Recorder()
    held = _Held(real)
    held.write(b"a")
    held.send(b"b")  # (the protocol's lane: an answer made whole)
    assert real.sent == [b"ab"]
    await asyncio.sleep(0)  # the turn's end finds nothing more to send
    assert real.sent == [b"ab"]


async def test_a_close_sends_what_is_held_first_and_a_closed_connection_gets_nothing() -> None:
    real = Recorder()
    held = _Held(real)
    held.write(b"bye")
    held.close()
    assert real.sent == [b"bye"] and real.closed
    held.write(b"late")
    await asyncio.sleep(0)
    assert real.sent == [b"bye"]



async def test_an_answer_is_sent_whole_the_moment_it_is_complete(tmp_path: Path) -> None:
    """Through uvicorn on a unix socket: the head and body arrive together, before what the
    request's task does after the answer (here it blocks the loop for 0.5 s)."""
    import uvicorn

    from corral.api.onepiece import OnePieceHttp

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"{}"})
        time.sleep(0.5)  # work after the answer, without yielding to the loop

    path = tmp_path / "s.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    server = uvicorn.Server(uvicorn.Config(app, http=OnePieceHttp, lifespan="off",
                                           log_level="warning", loop="none"))
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    while not server.started:
        await asyncio.sleep(0.01)

    def ask() -> tuple[float, list[bytes]]:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
            t0 = time.monotonic()
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            pieces = [s.recv(65536)]
            return time.monotonic() - t0, pieces

    took, pieces = await asyncio.to_thread(ask)
    server.should_exit = True
    await serving
    listener.close()
    assert pieces[0].startswith(b"HTTP/1.1 200") and pieces[0].endswith(b"\r\n\r\n{}")
    assert took < 0.4, f"the answer waited for the work after it: {took:.2f} s"
