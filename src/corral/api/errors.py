"""Every error the API answers, in Corral's one shape (``CorralError.to_dict``).

* Errors of the tree answer their own status (``error.status``) with their facts.
* A request FastAPI cannot parse (bad JSON, a wrong type, a missing field, a name off the
  rule, a number out of range) is an ``invalid_spec`` 422 naming the field, never FastAPI's
  own body.
* Starlette's own answers (no such route 404, wrong method 405) get the same shape.
"""

from __future__ import annotations

import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from corral.api.limits import Exceeded
from corral.domain import complaints
from corral.errors import CorralError, InvalidSpec, NotFound, TooLarge, as_corral_error

_WHERE = ("body", "path", "query", "header", "cookie")


# the member of a union pydantic names in an error's location (``memory.constrained-str``)
_UNION_MEMBER = re.compile(r"^(constrained-)?(str|int|float|bool|bytes|none)$|\[")


def _field(loc: tuple[object, ...] | list[object]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in _WHERE:
        parts = parts[1:]
    return ".".join(p for p in parts if not _UNION_MEMBER.search(p)) or "body"


def invalid_request(err: RequestValidationError) -> InvalidSpec:
    """The first problem FastAPI found, as an :class:`InvalidSpec` naming its field."""
    problems = err.errors()
    if not problems:
        return InvalidSpec("body", "invalid request")
    first = dict(problems[0])
    if first.get("type") == "json_invalid":
        ctx = first.get("ctx")
        why = ctx.get("error") if isinstance(ctx, dict) else None
        return InvalidSpec("body", f"not valid JSON ({why})" if why else "not valid JSON")
    return InvalidSpec(_field(first.get("loc", ())), complaints.reason(first))


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""

    @app.exception_handler(CorralError)
    async def corral_error(_req: Request, err: CorralError) -> JSONResponse:
        return JSONResponse(err.to_dict(), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_req: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse(invalid_request(err).to_dict(), status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(_req: Request, err: Exception) -> JSONResponse:
        answer = as_corral_error(err)
        return JSONResponse(answer.to_dict(), status_code=answer.status)

    @app.exception_handler(HTTPException)
    async def http_error(req: Request, err: HTTPException) -> JSONResponse:
        if err.status_code == 404:
            body = NotFound(f"no route {req.url.path}").to_dict()
        elif isinstance(err, Exceeded):
            body = TooLarge(str(err.detail), err.limit).to_dict()
        elif err.status_code == 400:  # a body FastAPI could not parse
            return JSONResponse(InvalidSpec("body", str(err.detail)).to_dict(), status_code=422)
        else:
            failure = CorralError(str(err.detail))
            failure.kind = "http_" + str(err.status_code)
            body = failure.to_dict()
        return JSONResponse(body, status_code=err.status_code, headers=err.headers)
