"""Waiting for one event of a machine (a device the guest released, say), shared by the QEMU
driver and the fake."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

Match = Callable[[dict[str, Any]], bool]


class EventWaiters:
    """Futures that complete when an event with matching data arrives."""

    def __init__(self) -> None:
        self._waiters: list[tuple[str, Match, asyncio.Future[None]]] = []

    def watch(self, event: str, match: Match) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((event, match, fut))
        return fut

    def deliver(self, event: str, data: dict[str, Any]) -> None:
        """Complete the waiters of ``event`` whose match accepts ``data``; forget the done."""
        for waiter in list(self._waiters):
            name, match, fut = waiter
            if name == event and not fut.done() and match(data):
                fut.set_result(None)
            if fut.done():
                self._waiters.remove(waiter)
