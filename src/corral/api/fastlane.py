"""The hot path of the API, answered without FastAPI's machinery: ``GET /v1/vms`` and
``POST /v1/vms/NAME/pause|resume`` (no query, no body). These are what scripts and sandbox
services call in loops, and where the daemon's own overhead shows beside the milliseconds
QEMU takes; FastAPI's routing, dependency solving and middleware stack cost about as much as
the pause itself.

On the unix socket the lane sits lower still (:class:`Lane`): inside the daemon's HTTP
protocol (:mod:`corral.api.onepiece`), a hot request of the local admin (no token, no
project picked; the unix socket's requests act as ``local``, see :mod:`corral.api.auth`)
that arrives whole in one read is answered without uvicorn's request cycle and the nine
ASGI layers above the lane, which cost a pause a third of a millisecond. It does what those
layers would do for it: the request is counted in the metrics under its route and audited
as :class:`corral.api.auth.Guard` audits it. Anything else (a token, a project, a body, a
request in pieces, a cluster, whose VMs may be another host's) goes up the usual way.

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

import http
import json
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from corral.api.names import API, MAX_PAGE, NAME_PATTERN
from corral.errors import CorralError, as_corral_error
from corral.service import access

if TYPE_CHECKING:
    from corral.service.manager import Manager

log = logging.getLogger(__name__)
_VERB = re.compile(r"^" + re.escape(API) + r"/vms/(" + NAME_PATTERN.strip("^$") +
                   r")/(pause|resume)$")
_JSON = [(b"content-type", b"application/json")]
LIST = API + "/vms"
Call = Callable[[], Any]  # the service call: a list, or an awaitable of a dict
Headers = list[tuple[bytes, bytes]]
# the headers a request the protocol's lane answers may carry (any other: the usual way)
_PLAIN = frozenset({b"host", b"user-agent", b"accept", b"accept-encoding"})


def hot(m: Manager, method: str, path: str) -> tuple[Call, str, dict[str, str]] | None:
    """The service call of a hot route, the route's template and its path parameters; None
    when ``method path`` is not one (a query string included)."""
    if method == "GET" and path == LIST:
        cluster = m.cluster
        return (m.vms.list if cluster is None else (lambda: cluster.list_vms(None))), LIST, {}
    if method != "POST":
        return None
    match = _VERB.match(path)
    if match is None:
        return None
    name, verb = match.groups()
    call = (lambda: m.vms.pause(name)) if verb == "pause" else (lambda: m.vms.resume(name))
    return call, f"{API}/vms/{{name}}/{verb}", {"name": name}


class FastLane:
    """ASGI middleware that answers the hot routes itself and passes the rest on."""

    def __init__(self, app: Any, manager: Manager, routes: list[Any]) -> None:
        self.app = app
        self.m = manager
        # the endpoints of the routes the lane answers for (the metrics name them by them)
        self.endpoints = {(method, route.path): route.endpoint for route in routes
                          for method in getattr(route, "methods", None) or ()}

    def _call(self, scope: dict[str, Any]) -> Call | None:
        """The service call for this request, or None to let FastAPI take it."""
        if scope["type"] != "http" or scope.get("query_string"):
            return None
        method = scope["method"]
        if method == "POST":
            for key, value in scope.get("headers", ()):
                if key == b"content-length" and value != b"0":
                    return None
                if key == b"transfer-encoding":
                    return None
        found = hot(self.m, method, scope["path"])
        if found is None:
            return None
        scope["endpoint"] = self.endpoints.get((method, found[1]))
        return found[0]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        call = self._call(scope)
        if call is None:
            await self.app(scope, receive, send)
            return
        await answer(call, scope, send)


async def result(call: Call, method: str, path: str) -> tuple[int, Headers, bytes, str]:
    """What the service ``call`` returns as an answer: its status, headers (but its length),
    body, and ``ok`` or the error's kind (an error in Corral's shape, as every route answers
    it); a list as ``GET /v1/vms`` answers it: its first page and its ``X-Total-Count``."""
    try:
        found = call()
        return _encoded(found if isinstance(found, list) else await found)
    except Exception as err:  # answered as every route answers it
        return _failed(err, method, path)


def result_now(call: Call, method: str, path: str) -> tuple[int, Headers, bytes, str]:
    """:func:`result` of a ``call`` that answers at once (a list: ``GET``)."""
    try:
        found = call()
        assert isinstance(found, list)
        return _encoded(found)
    except Exception as err:
        return _failed(err, method, path)


def _encoded(found: Any) -> tuple[int, Headers, bytes, str]:
    headers = _JSON
    if isinstance(found, list):  # the first page, as GET /v1/vms answers it
        headers = [*_JSON, (b"x-total-count", str(len(found)).encode())]
        found = found[:MAX_PAGE]
    return 200, headers, json.dumps(found).encode(), "ok"


def _failed(err: Exception, method: str, path: str) -> tuple[int, Headers, bytes, str]:
    if not hasattr(err, "status"):
        log.exception("internal error in %s %s", method, path)
    error = as_corral_error(err)
    return error.status, _JSON, json.dumps(error.to_dict()).encode(), error.kind


async def answer(call: Call, scope: dict[str, Any], send: Any) -> None:
    """Answer the request with what the service ``call`` returns (see :func:`result`)."""
    status, headers, body, _ = await result(call, scope["method"], scope["path"])
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class Lane:
    """The hot routes answered inside the unix socket's HTTP protocol (see the module doc),
    once ``ready()`` says the API is loaded (until then requests wait for it the usual way)."""

    def __init__(self, manager: Manager, ready: Callable[[], bool]) -> None:
        self.m = manager
        self.ready = ready

    def take(self, data: bytes) -> tuple[Call, str, dict[str, str], str] | None:
        """The request in ``data`` if it is a hot one the lane answers, and all of it (one
        request, no body): its service call, route template, path parameters and method."""
        end = data.find(b"\r\n\r\n")
        if end < 0 or end + 4 != len(data) or self.m.cluster is not None or not self.ready():
            return None
        lines = data[:end].split(b"\r\n")
        line = lines[0].split(b" ")
        if len(line) != 3 or line[2] != b"HTTP/1.1":
            return None
        for header in lines[1:]:
            name, sep, value = header.partition(b":")
            name = name.lower()
            if not sep or (name not in _PLAIN and (name != b"content-length" or
                                                   value.strip() != b"0")):
                return None
        method = line[0].decode("latin-1")
        found = hot(self.m, method, line[1].decode("latin-1"))
        return None if found is None else (*found, method)

    async def serve(self, request: tuple[Call, str, dict[str, str], str],
                    write: Callable[[bytes], None]) -> None:
        """Answer ``request`` (from :meth:`take`) through ``write``, then count it in the
        metrics and, if it acts, audit it as the local admin's."""
        call, route, _, method = request
        t0 = time.perf_counter()
        with access.acting_as(access.SYSTEM):
            answer = await result(call, method, route)
        self._send(request, answer, t0, write)

    def serve_now(self, request: tuple[Call, str, dict[str, str], str],
                  write: Callable[[bytes], None]) -> bool:
        """:meth:`serve` at once, for a request whose answer needs no wait (``GET``, the
        list: a task of its own cost it another turn of the event loop); False for another
        (nothing is done)."""
        call, route, _, method = request
        if method != "GET":
            return False
        t0 = time.perf_counter()
        with access.acting_as(access.SYSTEM):
            answer = result_now(call, method, route)
        self._send(request, answer, t0, write)
        return True

    def _send(self, request: tuple[Call, str, dict[str, str], str],
              answer: tuple[int, Headers, bytes, str], t0: float,
              write: Callable[[bytes], None]) -> None:
        _, route, params, method = request
        status, headers, body, kind = answer
        head = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}".encode()]
        head += [b"%s: %s" % pair for pair in headers]
        head.append(b"content-length: %d\r\n\r\n" % len(body))
        write(b"\r\n".join(head) + body)
        try:
            self.m.metrics.observe_request(route, method, status, time.perf_counter() - t0)
        except CorralError:  # the service is closing
            return
        if method != "GET":
            from corral.api.auth import audit

            audit(self.m, access.SYSTEM, method, route, params, status, kind, None)
