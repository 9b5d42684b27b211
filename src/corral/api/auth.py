"""The API's one authorization seam: every request becomes a principal here, before routing.

* **Who.** A request with ``Authorization: Bearer crl_…`` acts as that token (401 when it is
  malformed, unknown, revoked or expired). Without one, a request on the unix socket (mode
  0600: only root reaches it) acts as ``local``, an admin over every project; on the TLS
  listener it is refused (401). ``X-Corral-Project: P`` lets an admin pick the project its
  request works in (new objects go there, lists narrow to it).
* **May it.** The role a route needs comes from its method and template (:func:`required`):
  reads need ``viewer``, acts ``operator``, and the routes in :data:`ADMIN` ``admin``
  (tokens, projects, images, host-wide views). Nothing opens a path a client names with the
  daemon's rights (files travel as uploads and downloads, see
  :mod:`corral.service.hostpaths`), so exports and imports are an operator's. A role
  too low is 403. The principal is then set for the request
  (:func:`corral.service.access.acting_as`), and the service hides every object of another
  project (404, see :mod:`corral.service.access`).
* **How often.** Each token has a token bucket (``api.rate`` per second, ``api.burst`` at
  once): over it, 429 with ``Retry-After``.
* **Audit.** Every mutating request (and every one refused for its role) is recorded as an
  ``audit`` event: who, the route, the resource, the status and the result. A request
  without a valid token has no one to name: it goes to the daemon's log (at most one line a
  second, with a count), so a flood of them cannot fill the store.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import TYPE_CHECKING, Any

from starlette.routing import Match

from corral import settings
from corral.errors import CorralError, Forbidden, NotFound, RateLimited, Unauthorized
from corral.service import access

if TYPE_CHECKING:
    from corral.service.manager import Manager

log = logging.getLogger(__name__)
Scope = dict[str, Any]
READS = ("GET", "HEAD")
# (method, route) that need an admin; every other route: viewer to read, operator to act
ADMIN = frozenset({
    ("GET", "/v1/tokens"), ("POST", "/v1/tokens"), ("DELETE", "/v1/tokens/{name}"),
    ("POST", "/v1/projects"), ("PATCH", "/v1/projects/{name}"),
    ("DELETE", "/v1/projects/{name}"),
    # images are the host's, shared by every project
    ("POST", "/v1/images"), ("DELETE", "/v1/images/{image}"),
    # a whole VM sent by another host of the cluster (with its peer token)
    ("PUT", "/v1/cluster/incoming/{name}"),
    # a live migration's steps between hosts, and a host emptied by live migrations
    ("POST", "/v1/cluster/migrate-in/{name}"), ("POST", "/v1/cluster/migrate-in/{name}/outcome"),
    ("DELETE", "/v1/cluster/migrate-in/{name}"), ("POST", "/v1/cluster/evacuate"),
    ("POST", "/v1/hosts/{host}/evacuate"),
    # host-wide views that span projects
    ("GET", "/v1/topology"), ("GET", "/v1/trace"),
})
# the schema, and the web page's files (what it shows comes from token-checked calls)
PUBLIC = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/"})
# reads inside the guest: its files, its saved memory
OPERATOR_READS = frozenset({("GET", "/v1/vms/{name}/files"), ("GET", "/v1/vms/{name}/state")})
WS_BEARER = "corral.bearer."
MATCHED = 4096  # the (method, path) pairs whose route Guard keeps
WS_UNAUTHORIZED, WS_FORBIDDEN = 4401, 4403


def required(method: str, route: str) -> str:
    """The least role that may call ``method route``."""
    if (method, route) in ADMIN:
        return "admin"
    if method in READS and (method, route) not in OPERATOR_READS:
        return "viewer"
    return "operator"


class Bucket:
    """A token bucket: ``burst`` requests at once, refilled at ``rate`` per second."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.level, self.at = float(burst), time.monotonic()

    def take(self) -> float:
        """0 if a request may go now, else the seconds until one may."""
        now = time.monotonic()
        self.level = min(self.burst, self.level + (now - self.at) * self.rate)
        self.at = now
        if self.level >= 1:
            self.level -= 1
            return 0.0
        return (1 - self.level) / self.rate


async def _answer(send: Any, err: CorralError, headers: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps(err.to_dict()).encode()
    await send({"type": "http.response.start", "status": err.status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: see the module doc. ``remote``: the app of the TLS listener, where
    a request without a token is refused."""

    def __init__(self, app: Any, manager: Manager, routes: list[Any], remote: bool) -> None:
        self.app = app
        self.manager = manager
        self.routes = routes
        self.remote = remote
        self.rate = float(settings.value("api.rate"))
        self.burst = int(settings.value("api.burst"))
        self.buckets: dict[str, Bucket] = {}
        self.matched: dict[tuple[str, str], tuple[str | None, dict[str, Any]]] = {}
        self.refused, self.refused_at = 0, 0.0

    def _route(self, scope: Scope) -> tuple[str | None, dict[str, Any]]:
        """The route template and path parameters of this request. Walking the routes costs
        a tenth of a millisecond, so what a method and path matched is kept (a script's
        loop asks the same few again and again; a bounded number of them)."""
        key = (scope["method"], scope["path"])
        found = self.matched.get(key)
        if found is None:
            found = next(((route.path, child.get("path_params", {}))
                          for route in self.routes
                          for match, child in (route.matches(scope),)
                          if match == Match.FULL), (None, {}))
            if len(self.matched) >= MATCHED:
                self.matched.clear()
            self.matched[key] = found
        return found[0], dict(found[1])

    def _principal(self, scope: Scope) -> access.Principal:
        headers = dict(scope.get("headers", ()))
        auth = headers.get(b"authorization")
        if auth is None and scope["type"] == "websocket":
            # a browser cannot set headers on a WebSocket: the page offers its token as a
            # subprotocol, "corral.bearer.TOKEN", beside "corral" (which the server picks)
            offered = headers.get(b"sec-websocket-protocol", b"").decode("latin-1")
            for proto in (p.strip() for p in offered.split(",")):
                if proto.startswith(WS_BEARER):
                    auth = b"Bearer " + proto[len(WS_BEARER):].encode("latin-1")
        selected = headers.get(b"x-corral-project", b"").decode("latin-1") or None
        if auth is not None:
            scheme, _, presented = auth.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not presented.strip():
                raise Unauthorized("malformed Authorization header: expected 'Bearer TOKEN'")
            who = self.manager.tokens.authenticate(presented.strip())
        elif self.remote:
            raise Unauthorized("a token is needed: send 'Authorization: Bearer TOKEN' "
                               "(corral remote add … --token, or CORRAL_TOKEN)")
        else:
            who = access.SYSTEM
        if selected is None:
            return who
        if who.project is not None:
            if selected != who.project:
                raise Forbidden(f"token '{who.name}' works in project '{who.project}' only",
                                who.role, "admin")
            return who
        if selected not in self.manager.runtime.db.access.projects:
            raise NotFound(f"no project named '{selected}'; see 'corral project list'")
        return access.Principal(who.name, who.role, None, selected, who.home)

    async def _websocket(self, scope: Scope, receive: Any, send: Any) -> None:
        """A WebSocket (the console: typing into a guest) needs an operator; refused ones
        are closed before they are accepted (the client sees the code and why)."""
        try:
            who = self._principal(scope)
            self._limit(who)
            if not who.allows("operator"):
                raise Forbidden(f"'{who.name}' has the role {who.role}; the console needs "
                                "operator", who.role, "operator")
        except CorralError as err:
            code = WS_FORBIDDEN if err.status == 403 else WS_UNAUTHORIZED
            await send({"type": "websocket.close", "code": code,
                        "reason": err.message[:120]})
            return
        with access.acting_as(who):
            await self.app(scope, receive, send)

    def _limit(self, who: access.Principal) -> None:
        if who is access.SYSTEM:
            return
        bucket = self.buckets.get(who.name)
        if bucket is None:
            bucket = self.buckets[who.name] = Bucket(self.rate, self.burst)
        wait = bucket.take()
        if wait > 0:
            raise RateLimited(f"too many requests from token '{who.name}'; retry in "
                              f"{math.ceil(wait)} s", math.ceil(wait))

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http" or scope["path"] in PUBLIC or \
                scope["path"].startswith("/static/"):
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        route, params = self._route(scope)
        who: access.Principal | None = None
        try:
            who = self._principal(scope)
            self._limit(who)
            need = required(method, route or "")
            if not who.allows(need):
                raise Forbidden(f"'{who.name}' has the role {who.role}; {method} {route} "
                                f"needs {need}", who.role, need)
        except CorralError as err:
            extra = [(b"retry-after", str(err.retry_after).encode())] \
                if isinstance(err, RateLimited) else []
            await _answer(send, err, extra)
            if who is None:  # no principal to audit: the daemon's log, at most once a second
                self._log_refused(scope, err)
            if who is not None and not isinstance(err, RateLimited):
                self._audit(who, method, route, params, err.status, err.kind, None)
            return
        if method in READS:
            with access.acting_as(who):
                await self.app(scope, receive, send)
            return
        await self._act(who, scope, receive, send, route, params)

    async def _act(self, who: access.Principal, scope: Scope, receive: Any, send: Any,
                   route: str | None, params: dict[str, Any]) -> None:
        seen: dict[str, Any] = {"status": 500, "body": b""}

        async def watched(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            elif message["type"] == "http.response.body" and len(seen["body"]) < 65536:
                seen["body"] += message.get("body", b"")[:65536]
            await send(message)

        try:
            with access.acting_as(who):
                await self.app(scope, receive, watched)
        finally:
            status = int(seen["status"])
            # the answer is read only for what the record needs and the route does not
            # say: an error's kind, or the name of what a route without one made
            body = _decoded(seen["body"]) if status >= 400 or (status < 300 and not params) \
                else {}
            self._audit(who, scope["method"], route, params, status,
                        "ok" if status < 400 else str(body.get("kind", "error")),
                        body.get("name") if status < 300 else None)

    def _log_refused(self, scope: Scope, err: CorralError) -> None:
        now = time.monotonic()
        self.refused += 1
        if now - self.refused_at >= 1.0:
            client = scope.get("client") or ("the unix socket", "")
            log.warning("refused %s %s from %s: %s (%d refused since the last report)",
                        scope["method"], scope["path"][:200], client[0], err.message,
                        self.refused)
            self.refused, self.refused_at = 0, now

    def _audit(self, who: access.Principal, method: str, route: str | None,
               params: dict[str, Any], status: int, result: str, made: Any) -> None:
        audit(self.manager, who, method, route, params, status, result, made)


def audit(manager: Manager, who: access.Principal, method: str, route: str | None,
          params: dict[str, Any], status: int, result: str, made: Any) -> None:
    """Record the request ``method route`` (its path ``params``) that ``who`` made, its
    ``status`` and ``result`` (``ok`` or the error's kind), and the name of what it ``made``."""
    resource = str(next(iter(params.values()), None) or made or "")
    manager.tokens.audit(who, resource, {
        "role": who.role, "action": f"{method} {route or '?'}", "status": status,
        "result": result, **{k: str(v) for k, v in params.items()}})


def _decoded(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body) if body else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
