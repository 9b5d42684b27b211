"""The REST API, assembled: one routes module per resource, one set of error handlers.

Routes parse the request into one call of the service's resource objects
(``manager.vms``, ``.disks``, ``.snapshots``, ``.guest``, ``.images``, ``.host``,
``.networks``, ``.routers``, ``.pools``, ``.stacks``) and own no logic. Every error answers
Corral's one body, ``{"error": kind, "kind": kind, "message": one line, "facts": {...}}``
(see :mod:`corral.api.errors`); request bodies are bounded (:mod:`corral.api.limits`). The
OpenAPI schema, with every response body and error status, is at ``/openapi.json`` and
browsable at ``/docs``; it is made when first asked for, the views' schemas with it
(:mod:`corral.api.schema`), so a daemon that never serves it never pays for them. The web
page is at ``/`` (:mod:`corral.api.web`), the metrics at ``/metrics``, the live event
stream at ``/v1/events/stream`` and each VM's console WebSocket at ``/v1/vms/NAME/console``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.routing import Route

from corral.api import (
    cluster,
    console,
    disks,
    errors,
    events,
    guest,
    host,
    images,
    metrics,
    networks,
    pools,
    projects,
    routers,
    snapshots,
    stacks,
    uploads,
    vms,
    web,
)
from corral.api.auth import Guard
from corral.api.fastlane import FastLane
from corral.api.forward import Forward
from corral.api.limits import BodyLimit
from corral.api.names import API
from corral.api.opening import OpenGate, Opening
from corral.api.schema import CorralAPI
from corral.service.manager import Manager

__all__ = ["API", "create_app"]

ROUTES = (vms, snapshots, disks, guest, images, uploads, host, networks, routers, pools,
          projects, events, metrics, console, stacks, cluster)


def create_app(manager: Manager, manage_lifecycle: bool = True, remote: bool = False,
               where: web.Where | None = None, opening: Opening | None = None,
               on_failure: Callable[[BaseException], None] | None = None,
               loopback: bool = False) -> FastAPI:
    """The API bound to ``manager``; with ``manage_lifecycle`` the app opens (in the
    background: requests wait for it) and closes it; ``on_failure`` is called when the open
    fails. Routes look up ``manager``'s slices on each request: they exist once it is open.
    ``opening``: the open the requests wait for, shared by the apps of one daemon (the TCP
    listeners' wait for the unix socket's). ``remote``: the app of a TCP listener, where
    every request needs a token (the unix socket's acts as the local admin without one;
    see :mod:`corral.api.auth`). ``where`` tells the page where the daemon listens (filled
    in by the daemon). ``loopback``: the app of the page's loopback listener
    (``web.listen``), which refuses other sites."""
    opening = opening or Opening()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:  # served at once; requests wait for the open (OpenGate)
            opening.start(manager.open, on_failure)
        try:
            yield
        finally:
            if manage_lifecycle:
                await opening.stop()
                await manager.close()

    # FastAPI's OpenTelemetry hooks off: Corral has its own metrics (api/metrics.py), and
    # asking the providers whether they are configured costs every request ~7 µs
    app = CorralAPI(title="Corral", version="0.1.0", lifespan=lifespan,
                    description="A virtual machine manager on QEMU.",
                    telemetry={"tracing": False, "metrics": False, "logs": False})
    for module in ROUTES:
        # its routes, not the router: FastAPI builds an included router's routes a second
        # time (their parameters and fields) on the first request that walks past it
        app.router.routes.extend(module.routes(manager).routes)
    app.router.routes.extend(web.routes(where or web.Where()).routes)
    app.mount("/static", web.static_files(), name="static")
    errors.install(app)
    # innermost, the hot routes: inside Guard and the metrics (tokens, roles, projects, audit
    # and metrics apply to them) and inside Forward (a VM of another host is answered there)
    app.add_middleware(FastLane, manager=manager, routes=list(app.router.routes))
    # a request about a VM of another host goes there, once authorised
    app.add_middleware(Forward, manager=manager)
    app.add_middleware(BodyLimit)
    app.add_middleware(metrics.RequestMetrics, manager=manager, paths={
        r.endpoint: r.path for r in app.router.routes if isinstance(r, Route)})
    if loopback:  # the page's plain-HTTP listener: no other site's pages, no rebound names
        app.add_middleware(web.SameOrigin)
    # who asks, and may it, before anything reads the body
    app.add_middleware(Guard, manager=manager, routes=list(app.router.routes), remote=remote)
    # outermost: requests wait for the service's open (Guard reads the store's tokens)
    app.add_middleware(OpenGate, opening=opening)
    return app
