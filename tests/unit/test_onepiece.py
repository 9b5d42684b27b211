"""An answer written in pieces during one turn of the event loop leaves in one send (see
corral.api.onepiece); a close sends what is held first; a closed connection gets nothing."""

from __future__ import annotations

import asyncio

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


async def test_a_close_sends_what_is_held_first_and_a_closed_connection_gets_nothing() -> None:
    real = Recorder()
    held = _Held(real)
    held.write(b"bye")
    held.close()
    assert real.sent == [b"bye"] and real.closed
    held.write(b"late")
    await asyncio.sleep(0)
    assert real.sent == [b"bye"]
