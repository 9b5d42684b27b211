"""The QEMU guest agent (QGA) protocol over the VM's virtio-serial socket.

The channel is a byte stream that outlives guest reboots, so a reply may be stale. Every
session therefore starts with ``guest-sync-delimited`` and a random id: the host sends a raw
``0xFF`` byte (which makes the agent drop any half-read request), the agent answers with
``0xFF`` followed by the JSON reply, and everything before the reply carrying our id is
discarded. Requests sent before the guest opens its port wait in the socket, so one
connection made at start-up is answered the moment the agent comes up.

Once synced, a channel stays in step as long as every request's reply is read: the next
command goes without a sync (one guest round trip instead of two). A request whose reply was
not read (a timeout, a cancelled call, a command that sends none) leaves the channel out of
step, and the next command syncs first; a closed channel (a reboot resets it) starts again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from corral.errors import AgentError, Timeout


class GuestAgent:
    """One connection to a guest agent. Not safe for concurrent calls: the caller serialises."""

    def __init__(self, vm: str, path: Path) -> None:
        self.vm = vm
        self.path = path
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.lock = asyncio.Lock()
        self.in_step = False  # synced, and every reply since read: no stale reply can come
        self._holder: asyncio.Task[Any] | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            self.in_step = False
            try:
                self._reader, self._writer = await asyncio.open_unix_connection(
                    str(self.path), limit=64 << 20)
            except OSError as err:
                raise AgentError(f"guest agent socket of '{self.vm}' is not there: "
                                 f"{err.strerror}") from err
        return self._reader, self._writer

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        self._reader = self._writer = None
        self.in_step = False

    async def _read_reply(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        while True:
            line = await reader.readline()
            if not line:
                raise AgentError(f"guest agent channel of '{self.vm}' closed")
            line = line.lstrip(b"\xff").strip()
            if not line:
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                continue  # noise from a half-written reply before a reboot
            if isinstance(msg, dict):
                return msg

    async def sync(self, timeout: float) -> None:
        """Flush the channel and make sure the next reply is ours.

        :raises Timeout: when the agent does not answer in ``timeout`` seconds.
        """
        reader, writer = await self._open()
        self.in_step = False
        ident = secrets.randbelow(1 << 31)
        writer.write(b"\xff" + json.dumps({"execute": "guest-sync-delimited",
                                           "arguments": {"id": ident}}).encode() + b"\n")
        await writer.drain()

        async def until_ours() -> None:
            while True:
                msg = await self._read_reply(reader)
                if msg.get("return") == ident:
                    return

        try:
            await asyncio.wait_for(until_ours(), timeout)
        except TimeoutError as err:
            raise Timeout(f"guest agent of '{self.vm}' did not answer in {timeout:g} s") from err
        self.in_step = True

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """Keep the channel to the calling task: the calls it makes inside go one after
        another, with no other call between them."""
        async with self.lock:
            self._holder = asyncio.current_task()
            try:
                yield
            finally:
                self._holder = None

    def _turn(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """The lock, unless the calling task holds the channel already."""
        held = self._holder is not None and self._holder is asyncio.current_task()
        return contextlib.nullcontext() if held else self.lock

    async def execute(self, command: str, arguments: dict[str, Any] | None = None,
                      timeout: float = 30.0, expect_reply: bool = True) -> Any:
        """Run one agent command (after a sync unless the channel is in step) and return
        its result.

        :raises AgentError: when the agent reports an error.
        :raises Timeout: when it does not answer in ``timeout`` seconds.
        """
        replies = await self.exchange([(command, arguments)], timeout, expect_reply)
        if not replies:
            return None
        if "error" in replies[0]:
            err = replies[0]["error"]
            raise AgentError(f"guest agent of '{self.vm}': {err.get('desc', err)}")
        return replies[0].get("return")

    async def exchange(self, calls: list[tuple[str, dict[str, Any] | None]],
                       timeout: float = 30.0, expect_reply: bool = True
                       ) -> list[dict[str, Any]]:
        """Send ``calls`` at once (after a sync unless the channel is in step) and read
        their replies in order, each ``{"return": ...}`` or ``{"error": ...}``: one round
        trip to the guest for all of them (the agent runs them one after another).

        :raises AgentError: the channel is not there or broke.
        :raises Timeout: when the replies do not come in ``timeout`` seconds.
        """
        lines = b"".join(json.dumps({"execute": c, **({"arguments": a} if a else {})}
                                    ).encode() + b"\n" for c, a in calls)
        async with self._turn():
            try:
                if not self.in_step:
                    await self.sync(timeout)
                reader, writer = await self._open()
                self.in_step = False  # until every reply is read
                writer.write(lines)
                await writer.drain()
                if not expect_reply:
                    return []
                try:
                    async with asyncio.timeout(timeout):
                        replies = [await self._read_reply(reader) for _ in calls]
                except TimeoutError as exc:
                    raise Timeout(f"guest agent of '{self.vm}' did not answer "
                                  f"{calls[-1][0]} in {timeout:g} s") from exc
                self.in_step = True
                return replies
            except (Timeout, AgentError):
                await self.close()  # the next call starts on a fresh channel
                raise
            except OSError as broken:
                await self.close()
                raise AgentError(f"guest agent channel of '{self.vm}' failed: "
                                 f"{broken.strerror or broken}") from broken

    async def wait_ready(self, timeout: float) -> None:
        """Wait until the agent answers a sync, retrying as the guest boots.

        :raises Timeout: when it has not answered after ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        attempt = 0.02  # short at first: a restored guest answers within tens of milliseconds,
        while True:     # but a request that reached it mid-restore may never be answered
            left = deadline - loop.time()
            if left <= 0:
                raise Timeout(f"guest agent of '{self.vm}' did not answer in {timeout:g} s")
            try:
                async with self.lock:
                    await self.sync(min(left, attempt))
                return
            except Timeout:
                attempt = min(attempt * 2, 1.0)
                continue  # the request waits in the socket; a fresh id catches a late agent
            except (AgentError, OSError):
                await self.close()
                await asyncio.sleep(min(0.05, max(left, 0)))
