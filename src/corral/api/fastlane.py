"""The hot path of the API, answered without FastAPI's machinery: ``GET /v1/vms`` and
``POST /v1/vms/NAME/pause|resume`` (no query, no body). These are what scripts and sandbox
services call in loops, and where the daemon's own overhead shows beside the milliseconds
QEMU takes; FastAPI's routing, dependency solving and middleware stack cost about as much as
the pause itself.

The routes stay declared in FastAPI (their OpenAPI documentation, and any request the lane
does not take: a query string, a body, a name that needs checking) and answer exactly what
the lane answers: the same service call, the same JSON (a list's first page and its
``X-Total-Count``; in a cluster every host's VMs), the same error bodies. The lane sits
inside the authorization seam (:class:`corral.api.auth.Guard`), the request metrics and
the cluster's forwarding (:mod:`corral.api.forward`: a VM of another host is answered by
that host): the caller's token, role, rate and project apply to it as to any route (the
service hides what the caller's project may not see), its acts are audited, and it names
the route it answered in the request's scope (``endpoint``) so that the metrics count it
under the route's template.
"""

from __future__ import annotations

import json
import logging
import re
from typing import TYPE_CHECKING, Any

from corral.api.names import API, MAX_PAGE, NAME_PATTERN
from corral.errors import as_corral_error

if TYPE_CHECKING:
    from corral.service.manager import Manager

log = logging.getLogger(__name__)
_VERB = re.compile(r"^" + re.escape(API) + r"/vms/(" + NAME_PATTERN.strip("^$") +
                   r")/(pause|resume)$")
_JSON = [(b"content-type", b"application/json")]


class FastLane:
    """ASGI middleware that answers the hot routes itself and passes the rest on."""

    def __init__(self, app: Any, manager: Manager, routes: list[Any]) -> None:
        self.app = app
        self.m = manager
        # the endpoints of the routes the lane answers for (the metrics name them by them)
        self.endpoints = {(method, route.path): route.endpoint for route in routes
                          for method in getattr(route, "methods", None) or ()}

    def _call(self, scope: dict[str, Any]) -> Any:
        """The service call for this request, or None to let FastAPI take it."""
        if scope["type"] != "http" or scope.get("query_string"):
            return None
        method, path = scope["method"], scope["path"]
        if method == "GET" and path == API + "/vms":
            scope["endpoint"] = self.endpoints.get(("GET", path))
            cluster = self.m.cluster
            return self.m.vms.list if cluster is None else (lambda: cluster.list_vms(None))
        if method != "POST":
            return None
        for key, value in scope.get("headers", ()):
            if key == b"content-length" and value != b"0":
                return None
            if key == b"transfer-encoding":
                return None
        match = _VERB.match(path)
        if match is None:
            return None
        name, verb = match.groups()
        scope["endpoint"] = self.endpoints.get(("POST", API + "/vms/{name}/" + verb))
        return (lambda: self.m.vms.pause(name)) if verb == "pause" \
            else (lambda: self.m.vms.resume(name))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        call = self._call(scope)
        if call is None:
            await self.app(scope, receive, send)
            return
        await answer(call, scope, send)


async def answer(call: Any, scope: dict[str, Any], send: Any) -> None:
    """Answer the request with what the service ``call`` returns (its error in Corral's
    shape); a list as ``GET /v1/vms`` answers it: its first page and its ``X-Total-Count``."""
    status, headers = 200, _JSON
    try:
        result = call()
        if not isinstance(result, list):
            result = await result
        if isinstance(result, list):  # the first page, as GET /v1/vms answers it
            headers = [*_JSON, (b"x-total-count", str(len(result)).encode())]
            result = result[:MAX_PAGE]
        body = json.dumps(result).encode()
    except Exception as err:  # answered as every route answers it
        if not hasattr(err, "status"):
            log.exception("internal error in %s %s", scope["method"], scope["path"])
        error = as_corral_error(err)
        status, body = error.status, json.dumps(error.to_dict()).encode()
        headers = _JSON
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
