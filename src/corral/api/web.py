"""The web page and where it is served::

    GET  /                  the page (static files shipped in the package, under /static)
    GET  /v1/web            where the daemon serves the page (its URL, when it listens on TCP)

The page is plain HTML, CSS and JavaScript in ``corral/api/static``; its libraries (xterm.js
for the console, uPlot for the charts) are vendored in ``static/vendor`` at pinned versions
(``web/package.json``; ``make web-vendor`` refreshes them with npm). Everything it shows
comes from the same REST API, the event stream and the console WebSocket; its calls go
through one fetch wrapper (``api()`` in ``app.js``), the one place a bearer token will go.

On a TCP listener (``web.listen``, loopback only) :class:`SameOrigin` refuses what a web
page of another site could make a browser send there: a request whose ``Host`` is not a
loopback name (DNS rebinding), and a request or WebSocket whose ``Origin`` is another site.
Requests on the unix socket are not touched.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles

from corral.api.common import ok
from corral.api.names import API
from corral.views import WebInfo

STATIC = Path(__file__).parent / "static"
LOOPBACK_NAMES = frozenset({"localhost"})


class Where:
    """Where the daemon listens: filled in by the daemon once its sockets are bound."""

    def __init__(self) -> None:
        self.url: str | None = None
        self.socket = ""


def routes(where: Where) -> APIRouter:
    r = APIRouter(tags=["web"])

    @r.get("/", response_class=FileResponse, include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @r.get(f"{API}/web", responses=ok(WebInfo))
    async def web_info() -> Response:
        return Response(json.dumps({"url": where.url, "socket": where.socket}),
                        media_type="application/json")

    return r


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC)


def _loopback(host: str) -> bool:
    """Whether a ``Host`` header names a loopback address (with or without a port)."""
    if host.startswith("["):
        name = host[1:].partition("]")[0]
    else:
        name = host.rpartition(":")[0] if ":" in host else host
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class SameOrigin:
    """ASGI middleware: on the page's plain-HTTP TCP listener, only the page's own origin on
    a loopback host. The TLS listener is for remote clients (whose host is not loopback):
    every request there carries its token in a header, which no other site's page can make
    a browser send."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        server = scope.get("server")
        if scope["type"] in ("http", "websocket") and server and server[1] is not None \
                and scope.get("scheme") not in ("https", "wss"):
            headers = {k: v.decode("latin-1") for k, v in scope.get("headers", ())}
            host = headers.get(b"host", "")
            origin = headers.get(b"origin")
            if not _loopback(host) or (origin is not None and origin not in (
                    f"http://{host}", f"https://{host}")):
                await _forbid(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _forbid(scope: dict[str, Any], receive: Any, send: Any) -> None:
    message = "this listener serves only pages of its own loopback origin"
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.close", "code": 4403, "reason": message})
        return
    body = json.dumps({"error": "forbidden", "kind": "forbidden", "message": message,
                       "facts": {}}).encode()
    await send({"type": "http.response.start", "status": 403,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
