"""Metrics and figures (``manager.metrics``, ``manager.telemetry``)::

    GET  /metrics                   every metric, Prometheus text format
    GET  /v1/vms/NAME/stats         the VM's latest figures and recent points (the charts)

Both read cached figures (:mod:`corral.service.telemetry`): a scrape never waits for a
guest. :class:`RequestMetrics` times every API request by route template (``/v1/vms/{name}``,
not the VM's name, so the series stay few).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from corral.api.common import Name, json, ok, router
from corral.errors import CorralError
from corral.service.manager import Manager
from corral.views import VMStats

Scope = dict[str, Any]


def routes(m: Manager) -> APIRouter:
    r = router("metrics")

    @r.get("/vms/{name}/stats", responses=ok(VMStats, 404))
    async def vm_stats(name: Name) -> Response:
        """The figures ``/metrics`` shows for the VM, and its points of the last minutes."""
        return json(m.telemetry.vm_stats(name))

    top = APIRouter(tags=["metrics"])

    @top.get("/metrics", response_class=Response, responses={**ok(None), 200: {
        "description": "Prometheus text format",
        "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}})
    async def metrics() -> Response:
        return Response(m.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    r.routes.extend(top.routes)
    return r


class RequestMetrics:
    """ASGI middleware: count and time each HTTP request by its route template."""

    def __init__(self, app: Any, manager: Manager, paths: dict[Any, str]) -> None:
        self.app = app
        self.manager = manager
        self.paths = paths  # each route's endpoint → its path template

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def seen(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, seen)
        finally:
            self._observe(scope, status, time.perf_counter() - t0)

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        path = self.paths.get(scope.get("endpoint"))
        if path is None:  # the page's static files are one route; the rest matched none
            path = "/static" if scope["path"].startswith("/static/") else "unmatched"
        try:
            metrics = self.manager.metrics
        except CorralError:  # the service is not open (yet, or any more)
            return
        metrics.observe_request(path, scope["method"], status, seconds)
