"""How much a request may make the daemon hold: a body size limit, enforced while the body
is read and before the request is routed (so a huge upload to a missing VM is refused at
once, not buffered first).

* JSON bodies: at most :data:`MAX_JSON_BODY` (1 MiB).
* File uploads (``PUT /v1/vms/NAME/files``): at most :data:`MAX_FILE_BODY` (256 MiB).

A body over the limit is answered 413 ``too_large``: at once when ``Content-Length`` says so,
else as soon as the bytes read pass the limit.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException

from corral.errors import TooLarge

MAX_JSON_BODY = 1 << 20
MAX_FILE_BODY = 256 << 20
MAX_MOVE_BODY = 1 << 40  # a VM moved from another host of the cluster: its disks and state

Scope = dict[str, Any]
Message = dict[str, Any]


def limit_for(method: str, path: str) -> int:
    if method == "PUT" and path.endswith("/files"):
        return MAX_FILE_BODY
    if method == "PUT" and path.startswith("/v1/cluster/incoming/"):
        return MAX_MOVE_BODY
    return MAX_JSON_BODY


class Exceeded(HTTPException):
    """Raised from ``receive`` when the body passes its limit: an HTTPException, so that
    FastAPI's body parsing lets it through to the error handlers (:mod:`corral.api.errors`),
    which answer it as :class:`~corral.errors.TooLarge`."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")
        self.limit = limit


async def _refuse(send: Any, limit: int) -> None:
    body = json.dumps(TooLarge(f"the request body is larger than {limit} bytes",
                               limit).to_dict()).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """ASGI middleware enforcing the limits above."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = limit_for(scope["method"], scope["path"])
        for key, value in scope.get("headers", ()):
            if key == b"content-length" and (not value.isdigit() or int(value) > limit):
                await _refuse(send, limit)
                return
        seen = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal seen
            message: Message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise Exceeded(limit)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except Exceeded:
            if not started:
                await _refuse(send, limit)
