"""What every routes module shares: names and numbers as the API accepts them, the error
answers a route documents, and a JSON answer that skips FastAPI's encoder.

Every route answers a pre-serialised :func:`json` body and documents its shape with a view
of :mod:`corral.views` (``responses=ok(View, ...)``): the service returns plain JSON-ready
dicts, and FastAPI's generic encoder and response validation would cost more than a pause
itself. The documentation is JSON schema only (a ``$ref`` to each view), never a response
model: the views' schemas are made when the OpenAPI schema is first asked for
(:mod:`corral.api.schema`).
"""

from __future__ import annotations

import json as _json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute

# re-exported: the routes modules take them from here
from corral.api.names import API as API
from corral.api.names import MAX_PAGE as MAX_PAGE
from corral.api.names import NAME_PATTERN as NAME_PATTERN
from corral.api.schema import REF_PREFIX, view_schema

DAY = 86400.0
MAX_TIMEOUT = DAY

Name = Annotated[str, Path(pattern=NAME_PATTERN, min_length=1, max_length=32,
                           description="1-32 of a-z, 0-9 and '-', starting with a letter "
                                       "or digit")]
OptName = Annotated[str | None, Query(pattern=NAME_PATTERN, min_length=1, max_length=32)]


def timeout(default: float, what: str = "seconds to wait") -> Any:
    """A ``?timeout=`` query parameter: finite, more than 0 and at most a day."""
    return Query(default, gt=0, le=MAX_TIMEOUT, allow_inf_nan=False,
                 description=f"{what} (0 < S <= {MAX_TIMEOUT:g})")


Seconds = Annotated[float, Query(gt=0, le=MAX_TIMEOUT, allow_inf_nan=False)]


class Paging:
    """``?offset=&limit=`` of a list: at most :data:`MAX_PAGE` items per answer, the total
    in the ``X-Total-Count`` header."""

    def __init__(self, offset: Annotated[int, Query(ge=0, le=1 << 31,
                                                    description="skip this many")] = 0,
                 limit: Annotated[int, Query(ge=1, le=MAX_PAGE,
                                             description="at most this many")] = MAX_PAGE
                 ) -> None:
        self.offset = offset
        self.limit = limit

    def of(self, items: list[Any]) -> Response:
        response = json(items[self.offset:self.offset + self.limit])
        response.headers["x-total-count"] = str(len(items))
        return response


Page = Annotated[Paging, Depends()]

ERROR_REF = {"$ref": REF_PREFIX + "Error"}
_REASONS = {
    401: "No valid token (missing, malformed, unknown, revoked or expired)",
    403: "The token's role may not do this, or it needs a daemon running as root",
    404: "No such object (or one of another project)",
    429: "Too many requests from this token (see the Retry-After header)",
    409: "Not legal in the object's state, name taken, or no capacity",
    413: "Request body too large", 422: "Invalid input (names, numbers, sizes, body)",
    500: "A failure inside Corral or the host", 502: "The guest agent failed",
    504: "It did not happen in time", 507: "The host's disk is full",
}


def _check_text(value: object) -> None:
    """:raises ValueError: a string in ``value`` holds a lone surrogate (JSON's ``\\udXXX``),
    which is not text: nothing downstream (paths, the store, QEMU) could write it."""
    if isinstance(value, str):
        value.encode()
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_text(k)
            _check_text(v)
    elif isinstance(value, list):
        for v in value:
            _check_text(v)


class _TextOnlyRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:  # each answered as a 422 like any JSON error
                data = _json.loads(body)
                _check_text(data)
            except UnicodeDecodeError as err:
                raise _json.JSONDecodeError("not UTF-8", "", err.start) from err
            except UnicodeEncodeError as err:
                raise _json.JSONDecodeError("a string is not UTF-8 text (a lone surrogate)",
                                            "", 0) from err
            self._json = data
        return self._json


class CheckedRoute(APIRoute):
    """A route whose JSON bodies hold only real text."""

    def get_route_handler(self) -> Any:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            response: Response = await handler(_TextOnlyRequest(request.scope, request.receive))
            return response

        return checked


def router(tag: str) -> APIRouter:
    """The router of one resource's routes, under ``/v1``."""
    return APIRouter(prefix=API, tags=[tag], route_class=CheckedRoute)


def ok(view: Any, *errors: int, status: int = 200) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route answering ``view`` with ``status``, and the error statuses
    every route can answer (401, 403, 422, 429, 500, 507) plus ``errors``, each with
    Corral's error body."""
    out: dict[int | str, dict[str, Any]] = {}
    if view is not None:
        out[status] = {"description": "Success",
                       "content": {"application/json": {"schema": view_schema(view)}}}
    for code in sorted({401, 403, 422, 429, 500, 507, *errors}):
        # JSON also on routes answering another media type (files, topology)
        out[code] = {"description": _REASONS.get(code, "Error"),
                     "content": {"application/json": {"schema": dict(ERROR_REF)}}}
        if code == 429:
            out[code]["headers"] = {"Retry-After": {
                "description": "seconds to wait", "schema": {"type": "integer"}}}
    return out


def json(data: object, status: int = 200) -> Response:
    """A JSON answer without FastAPI's encoder pass."""
    return Response(_json.dumps(data).encode(), status_code=status,
                    media_type="application/json")


def binary(description: str, media_type: str = "application/octet-stream",
           *errors: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route answering a file's bytes (errors as :func:`ok`)."""
    return {**ok(None, *errors),
            200: {"description": description,
                  "content": {media_type: {"schema": {"type": "string", "format": "binary"}}}}}


Source = Callable[[], AbstractAsyncContextManager[tuple[int, dict[str, str],
                                                        AsyncIterator[bytes]]]]


class Download(Response):
    """A file sent as it is read, with its exact ``Content-Length``. ``source`` is entered
    when the answer is sent and left when it is done (however it ends: a lock taken for the
    read is always released). An error before the first byte is answered as any error; one
    after it ends the answer short, so the client sees fewer bytes than announced and keeps
    nothing."""

    def __init__(self, source: Source, media_type: str = "application/octet-stream") -> None:
        super().__init__(media_type=media_type)
        self.source = source

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async with self.source() as (size, headers, chunks):
            raw = [(b"content-type", self.media_type.encode()),  # type: ignore[union-attr]
                   (b"content-length", str(size).encode())]
            raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
            await send({"type": "http.response.start", "status": 200, "headers": raw})
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
