"""Any daemon answers: a request about a VM of another host of the cluster is forwarded, as
it came, to that host's daemon over its authenticated TLS API, and its answer (status,
body, errors included) is this daemon's answer.

While the cluster store is out of reach every change (any method but GET) is refused with
``StoreUnavailable``, here, before it acts on anything; reads are answered.

The middleware sits inside the authorization seam (:mod:`corral.api.auth`): a request is
authenticated and authorised here first; it then travels with the peer token the other host
published (an admin token of that host; see :meth:`corral.service.cluster.Member._api`),
narrowed to the project the asker works in, and the other host's certificate must have the
fingerprint it published. A VM of this host costs one dictionary lookup; one of another host
one query of the cluster store and the forwarded exchange (connections are kept alive, one
pool per host). A VM whose host is down, or whose host serves no API, fails at once with
``HostUnavailable`` naming the host; a host that stops answering fails within the request's
own timeout plus :data:`GRACE` seconds.
"""

from __future__ import annotations

import asyncio
import re
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral.errors import CorralError, HostUnavailable, StoreUnavailable
from corral.service import access
from corral.wire import Connection, error

if TYPE_CHECKING:
    from corral.service.manager import Manager

Scope = dict[str, Any]
VM_PATH = re.compile(r"^/v1/vms/([^/]+)(?:/(.*))?$")
LOCAL_ONLY = frozenset({"placement", "console"})  # answered here (cluster-wide) or not at all
GRACE = 30.0
DEFAULT_TIMEOUT = 120.0


class Peers:
    """Kept-alive connections to other hosts' APIs, a few per host and timeout."""

    def __init__(self) -> None:
        self._free: dict[tuple[str, str, str, str | None, float], list[Connection]] = {}

    def exchange(self, route: dict[str, Any], project: str | None, timeout: float,
                 method: str, url: str, body: bytes | None, content_type: str,
                 file: Path | None = None) -> tuple[int, dict[str, str], bytes]:
        key = (route["address"], route["fingerprint"], route["api_token"], project, timeout)
        pool = self._free.setdefault(key, [])
        conn = pool.pop() if pool else Connection(
            url=f"https://{route['address']}", token=route["api_token"],
            fingerprint=route["fingerprint"], project=project, timeout=timeout)
        try:
            answer = conn.exchange(method, url, body, content_type, file)
        except CorralError as err:
            conn.close()
            raise HostUnavailable(f"host {route['host']} did not answer: {err.message}",
                                  route["host"]) from err
        pool.append(conn)
        return answer


PEERS = Peers()  # one pool per daemon, for forwarded requests and moved VMs


async def send_file(route: dict[str, Any], url: str, file: Path) -> dict[str, Any]:
    """PUT ``file`` to another host's API (a VM moved there) and return its JSON answer.

    :raises HostUnavailable: it did not answer. :raises CorralError: what it answered.
    """
    import json

    status, _headers, data = await asyncio.to_thread(
        PEERS.exchange, route, None, 3600.0, "PUT", url, None, "application/octet-stream",
        file)
    answer = json.loads(data) if data else {}
    if status >= 400:
        raise error(status, answer if isinstance(answer, dict) else {})
    return dict(answer)


async def call_peer(route: dict[str, Any], method: str, url: str,
                    body: dict[str, Any] | None, timeout: float) -> dict[str, Any]:
    """One JSON request to another host's API (a live migration's steps) and its answer.

    :raises HostUnavailable: it did not answer. :raises CorralError: what it answered.
    """
    import json

    payload = json.dumps(body).encode() if body is not None else None
    status, _headers, data = await asyncio.to_thread(
        PEERS.exchange, route, None, timeout, method, url, payload, "application/json")
    answer = json.loads(data) if data else {}
    if status >= 400:
        raise error(status, answer if isinstance(answer, dict) else {})
    return dict(answer)


class Forward:
    """ASGI middleware: forward requests about VMs of other hosts (see the module)."""

    def __init__(self, app: Any, manager: Manager) -> None:
        self.app = app
        self.manager = manager
        self.peers = PEERS

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD") \
                and self.manager.is_open and self.manager.cluster is not None \
                and not self.manager.cluster.store_ok:
            err = StoreUnavailable("the cluster store is out of reach: changes are refused "
                                   "until it answers again (running VMs keep running)")
            await _answer(send, err.status, {}, _error_body(err))
            return
        match = VM_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        member = self.manager.cluster if match and self.manager.is_open else None
        if member is None or match is None or match.group(2) in LOCAL_ONLY:
            await self.app(scope, receive, send)
            return
        try:
            route = await member.route_of(urllib.parse.unquote(match.group(1)))
        except CorralError as err:
            if isinstance(err, HostUnavailable) and scope["method"] == "GET" \
                    and match.group(2) is None:
                await self.app(scope, receive, send)  # the store tells it, as unknown
            else:
                await _answer(send, err.status, {}, _error_body(err))
            return
        if route is None:
            await self.app(scope, receive, send)
            return
        await self._forward(route, scope, receive, send)

    async def _forward(self, route: dict[str, Any], scope: Scope, receive: Any,
                       send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        query = scope.get("query_string", b"").decode("latin-1")
        url = scope.get("raw_path", scope["path"].encode()).decode("latin-1") + \
            (f"?{query}" if query else "")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        asked = urllib.parse.parse_qs(query).get("timeout", [])
        try:
            timeout = min(float(asked[0]), 86400.0) if asked else DEFAULT_TIMEOUT
        except ValueError:
            timeout = DEFAULT_TIMEOUT
        method = scope["method"]
        try:
            status, answer_headers, data = await asyncio.to_thread(
                self.peers.exchange, route, access.current().scope, timeout + GRACE, method,
                url, body if body or method in ("POST", "PUT", "PATCH") else None,
                headers.get("content-type", "application/json"))
        except CorralError as err:
            await _answer(send, err.status, {}, _error_body(err))
            return
        await _answer(send, status, answer_headers, data)


def _error_body(err: CorralError) -> bytes:
    import json

    return json.dumps(err.to_dict()).encode()


async def _answer(send: Any, status: int, headers: dict[str, str], data: bytes) -> None:
    """Send an answer; a streamed (chunked) one stays chunked, so a client that reads it
    line by line still can (it arrives whole: forwarding does not stream yet)."""
    out = [(b"content-type", headers.get("content-type", "application/json").encode())]
    if headers.get("transfer-encoding", "").lower() != "chunked":
        out.append((b"content-length", str(len(data)).encode()))
    for name in ("x-total-count", "retry-after", "x-corral-export"):  # an export's summary
        if name in headers:
            out.append((name.encode(), headers[name].encode()))
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": data})
