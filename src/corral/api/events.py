"""The event log and its live stream (``manager.vms``, ``manager.events``)::

    GET  /v1/events?since=&vm=&tail=    the event log after id ``since`` (``tail``: the last N)
    GET  /v1/events/stream?since=&vm=   Server-Sent Events: every event as it is committed

The stream is resumable: with ``since`` (or the ``Last-Event-ID`` header a browser's
``EventSource`` sends when it reconnects, which wins) it first gives the events of the log
after that id, then the live ones, each once and in order; without either it starts with
the next event. Each SSE message carries the event's id (``id:``) and the event as JSON
(``data:``). A comment line every 15 s keeps idle connections open. A client that falls
more than ``events.queue`` events behind gets an ``event: dropped`` message saying why and
the stream ends; it reconnects with ``Last-Event-ID`` and catches up from the log.
"""

from __future__ import annotations

import json as _json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import Response, StreamingResponse

from corral.api.common import OptName, json, ok, router
from corral.api.names import MAX_PAGE
from corral.service import access
from corral.service.events import Dropped
from corral.service.manager import Manager
from corral.views import Event

MAX_EVENT_ID = (1 << 63) - 1
HEARTBEAT = 15.0
RETRY_MS = 1000  # how soon a browser reconnects after the stream ends
EventId = Annotated[int | None, Query(ge=0, le=MAX_EVENT_ID,
                                      description="give the events after this id first")]


def sse(ev: dict[str, object]) -> bytes:
    """One event as a Server-Sent Events message."""
    return f"id: {ev['id']}\ndata: {_json.dumps(ev)}\n\n".encode()


def routes(m: Manager) -> APIRouter:
    r = router("events")

    @r.get("/events", responses=ok(list[Event]))
    async def events(since: Annotated[int, Query(ge=0, le=MAX_EVENT_ID)] = 0,
                     vm: OptName = None, project: OptName = None,
                     tail: Annotated[int | None, Query(ge=1, le=10000, description=
                                                       "only the last N events")] = None,
                     limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = MAX_PAGE
                     ) -> Response:
        """The event log after id ``since`` (a page of ``limit``, or its last ``tail``):
        ``vm``'s only, or ``project``'s only (a token sees its own project's only)."""
        return json(m.vms.events(since, vm, tail, limit, project))

    @r.get("/events/stream", response_class=StreamingResponse, responses={
        **ok(None), 200: {"description": "Server-Sent Events, one per event (data: an Event)",
                          "content": {"text/event-stream": {"schema": {"type": "string"}}}}})
    async def event_stream(since: EventId = None, vm: OptName = None,
                           last_event_id: Annotated[str | None, Header(max_length=20)] = None
                           ) -> Response:
        start = since
        if last_event_id is not None and last_event_id.strip().isdigit():
            start = min(int(last_event_id), MAX_EVENT_ID)
        sub = m.events.subscribe(vm)
        scope = access.current().scope  # a token sees its own project's events only

        async def stream() -> AsyncIterator[bytes]:
            yield f"retry: {RETRY_MS}\n: corral events\n\n".encode()
            try:
                async for ev in sub.events(start, HEARTBEAT):
                    if ev is None:
                        yield b": idle\n\n"
                    elif scope is None or ev.get("project") == scope:
                        yield sse(ev)
            except Dropped as err:
                yield f"event: dropped\ndata: {_json.dumps({'reason': str(err)})}\n\n".encode()
            finally:
                m.events.unsubscribe(sub)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})

    return r
