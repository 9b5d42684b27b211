"""The daemon answers while it is still opening: the socket serves as soon as the API is
loaded, and the service opens (store, re-adoption of every VM, networks, queue, pools) in
the background meanwhile (:class:`Opening`). :class:`OpenGate` holds each request until
the service is open, then lets it through; a service that could not open answers every
request with why. The gate is the outermost middleware: the authorization seam behind it
(:mod:`corral.api.auth`) reads the tokens and projects of the store the open loads, and the
TCP listeners' apps share the unix socket's open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)


class Opening:
    """The service's open, run in the background."""

    def __init__(self) -> None:
        self.opening: asyncio.Task[None] | None = None

    def start(self, open_: Callable[[], Awaitable[None]],
              on_failure: Callable[[BaseException], None] | None = None) -> None:
        async def run() -> None:
            await open_()

        self.opening = asyncio.create_task(run(), name="open-service")

        def done(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is not None:
                if on_failure is not None:  # it tells (the daemon: one line, its exit code)
                    on_failure(task.exception())  # type: ignore[arg-type]
                else:
                    log.error("the service could not open: %s", task.exception())

        self.opening.add_done_callback(done)

    async def stop(self) -> None:
        """Cancel an open still under way (the daemon stops before it finished)."""
        if self.opening is not None and not self.opening.done():
            self.opening.cancel()
            with contextlib.suppress(BaseException):  # cancelled or failed: stopped either way
                await self.opening


class OpenGate:
    """ASGI middleware: requests wait for the service's open to finish."""

    def __init__(self, app: Any, opening: Opening) -> None:
        self.app = app
        self.state = opening

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        opening = self.state.opening
        if scope["type"] not in ("http", "websocket") or opening is None:
            await self.app(scope, receive, send)
            return
        if not opening.done():
            await asyncio.wait([opening])
        if opening.cancelled() or opening.exception() is None:
            await self.app(scope, receive, send)
            return
        await refuse(scope, send, f"the daemon could not open: {opening.exception()}")


async def refuse(scope: Any, send: Any, message: str) -> None:
    """Answer a request the daemon cannot serve with why, a 500 (a WebSocket is closed
    before it is accepted, with why)."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1011, "reason": message[:120]})
        return
    body = json.dumps({"error": "internal", "kind": "internal", "message": message,
                       "facts": {}}).encode()
    await send({"type": "http.response.start", "status": 500,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
