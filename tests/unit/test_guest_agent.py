"""The guest-agent channel against a scripted agent on a Unix socket: a channel in step runs
a command in one round trip (no sync), a reply left unread (a timeout, a cancelled call, a
command that sends none) makes the next call sync and skip the stale reply, and a task that
holds the channel runs its calls with no other call between them."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from corral.engine.qemu.guest_agent import GuestAgent
from corral.errors import Timeout


class Agent:
    """Answers each request in order; ``delay`` holds the reply of a command back."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.delay: dict[str, float] = {}

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._answer(reader, writer)
        finally:
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> None:
        while line := await reader.readline():
            msg = json.loads(line.lstrip(b"\xff"))
            command = msg["execute"]
            self.seen.append(command)
            await asyncio.sleep(self.delay.get(command, 0))
            if command == "guest-sync-delimited":
                writer.write(b"\xff" + json.dumps({"return": msg["arguments"]["id"]}).encode()
                             + b"\n")
            elif command != "guest-shutdown":
                writer.write(json.dumps({"return": {"of": command}}).encode() + b"\n")
            await writer.drain()


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[tuple[Agent, GuestAgent]]:
    fake = Agent()
    server = await asyncio.start_unix_server(fake.serve, str(tmp_path / "qga.sock"))
    channel = GuestAgent("vm", tmp_path / "qga.sock")
    try:
        yield fake, channel
    finally:
        await channel.close()
        server.close()
        await server.wait_closed()


async def test_a_channel_in_step_runs_commands_without_a_sync(
        agent: tuple[Agent, GuestAgent]) -> None:
    fake, channel = agent
    assert await channel.execute("guest-ping") == {"of": "guest-ping"}
    assert await channel.execute("guest-info") == {"of": "guest-info"}
    assert await channel.execute("guest-ping") == {"of": "guest-ping"}
    assert fake.seen == ["guest-sync-delimited", "guest-ping", "guest-info", "guest-ping"]


async def test_a_reply_not_read_makes_the_next_call_sync_and_skip_it(
        agent: tuple[Agent, GuestAgent]) -> None:
    fake, channel = agent
    await channel.wait_ready(5)
    fake.delay["guest-info"] = 0.3
    with pytest.raises(Timeout):
        await channel.execute("guest-info", timeout=0.05)
    assert await channel.execute("guest-ping") == {"of": "guest-ping"}  # not guest-info's
    assert fake.seen[-2:] == ["guest-sync-delimited", "guest-ping"]

    call = asyncio.ensure_future(channel.execute("guest-info"))  # cancelled mid-way
    await asyncio.sleep(0.05)
    call.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await call
    fake.delay.clear()
    assert await channel.execute("guest-ping") == {"of": "guest-ping"}
    assert fake.seen[-2:] == ["guest-sync-delimited", "guest-ping"]

    await channel.execute("guest-shutdown", expect_reply=False)
    assert await channel.execute("guest-ping") == {"of": "guest-ping"}
    assert fake.seen[-3:] == ["guest-shutdown", "guest-sync-delimited", "guest-ping"]


async def test_a_task_holding_the_channel_runs_its_calls_back_to_back(
        agent: tuple[Agent, GuestAgent]) -> None:
    fake, channel = agent
    await channel.wait_ready(5)
    fake.delay["guest-info"] = 0.05
    other: asyncio.Future[Any] | None = None

    async def holder() -> None:
        nonlocal other
        async with channel.hold():
            await channel.execute("guest-info")
            other = asyncio.ensure_future(channel.execute("guest-ping"))
            await asyncio.sleep(0.02)  # the other call waits for the channel
            await channel.execute("guest-info")

    await holder()
    assert other is not None
    await other
    assert fake.seen[1:] == ["guest-info", "guest-info", "guest-ping"]


async def test_an_exchange_sends_its_calls_at_once_and_reads_each_reply(
        agent: tuple[Agent, GuestAgent]) -> None:
    fake, channel = agent
    replies = await channel.exchange([("guest-exec-status", {"pid": 1}),
                                      ("guest-file-close", {"handle": 2})])
    assert replies == [{"return": {"of": "guest-exec-status"}},
                       {"return": {"of": "guest-file-close"}}]
    assert await channel.execute("guest-ping") == {"of": "guest-ping"}  # still in step
    assert fake.seen == ["guest-sync-delimited", "guest-exec-status", "guest-file-close",
                         "guest-ping"]
