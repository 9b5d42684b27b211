"""The QMP facade against a small QMP server on a unix socket: commands written at once by
qemu.qmp's client still get their own replies (by id, events between them), QEMU's
refusals and a lost connection become MonitorError, and events reach the callback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from corral.engine.qemu.qmp import Monitor
from corral.errors import MonitorError

GREETING = {"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""},
                    "capabilities": []}}


async def messages(reader: asyncio.StreamReader) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects a client sends, as QEMU's streaming parser reads them (qemu.qmp
    ends no message with a newline)."""
    decoder, buf = json.JSONDecoder(), ""
    while chunk := await reader.read(4096):
        buf += chunk.decode()
        while buf.strip():
            try:
                msg, end = decoder.raw_decode(buf.lstrip())
            except ValueError:
                break
            buf = buf.lstrip()[end:]
            yield msg


class FakeQemu:
    """Answers ``stop``/``cont`` with their event first (as QEMU does), refuses unknown
    commands, and closes the connection on ``quit`` without answering."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def send(obj: dict[str, Any]) -> None:
            writer.write(json.dumps(obj).encode() + b"\r\n")

        send(GREETING)
        async for msg in messages(reader):
            self.seen.append(msg)
            command, ident = msg.get("execute"), msg.get("id")
            if command == "quit":
                break
            if command in ("stop", "cont"):
                send({"timestamp": {"seconds": 1, "microseconds": 0},
                      "event": "STOP" if command == "stop" else "RESUME"})
                send({"return": {}, "id": ident})
            elif command in ("qmp_capabilities", "query-status"):
                send({"return": {"status": "running", "running": True}
                      if command == "query-status" else {}, "id": ident})
            else:
                send({"error": {"class": "CommandNotFound",
                                "desc": f"The command {command} has not been found"},
                      "id": ident})
            await writer.drain()
        writer.close()


@pytest.fixture
async def qemu(tmp_path: Path) -> AsyncIterator[tuple[FakeQemu, Path]]:
    fake = FakeQemu()
    path = tmp_path / "qmp.sock"
    server = await asyncio.start_unix_server(fake.serve, str(path))
    yield fake, path
    server.close()
    await server.wait_closed()


async def test_commands_events_and_refusals(qemu: tuple[FakeQemu, Path]) -> None:
    fake, path = qemu
    events: list[tuple[str, dict[str, Any]]] = []
    mon = Monitor("web", lambda kind, data: events.append((kind, data)))
    await mon.connect(path)
    try:
        assert await mon.execute("stop") == {}
        assert await mon.execute("cont") == {}
        statuses = await asyncio.gather(*(mon.execute("query-status") for _ in range(5)))
        assert statuses == [{"status": "running", "running": True}] * 5
        with pytest.raises(MonitorError) as refused:
            await mon.execute("nope", {"arg": 1})
        assert refused.value.error_class == "CommandNotFound"
        assert refused.value.qmp_command == "nope"
        for _ in range(100):
            if len(events) == 2:
                break
            await asyncio.sleep(0.01)
        assert [kind for kind, _ in events] == ["STOP", "RESUME"]
        sent = [m for m in fake.seen if m["execute"] != "qmp_capabilities"]
        assert sent[0] == {"execute": "stop", "id": sent[0]["id"]}
        assert sent[-1] == {"execute": "nope", "arguments": {"arg": 1}, "id": sent[-1]["id"]}
        assert len({m["id"] for m in sent}) == len(sent)
    finally:
        await mon.close()


async def test_a_lost_connection_is_a_monitor_error(qemu: tuple[FakeQemu, Path]) -> None:
    _fake, path = qemu
    mon = Monitor("web", lambda kind, data: None)
    await mon.connect(path)
    try:
        with pytest.raises(MonitorError) as lost:
            await mon.execute("quit", timeout=5)
        assert lost.value.error_class == "Disconnected"
        with pytest.raises(MonitorError):
            await mon.execute("query-status", timeout=5)
    finally:
        await mon.close()
