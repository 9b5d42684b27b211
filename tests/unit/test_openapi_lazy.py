"""The OpenAPI schema costs the daemon nothing until it is asked for: no route holds a
response model (FastAPI would build a pydantic validator and serializer for each at
registration), and the views' components are made with the schema, once, every ``$ref``
resolving to one. The app holds the routes themselves, not included routers (whose routes
FastAPI builds a second time on the first request walking past them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import Mount, Route, WebSocketRoute

from corral import views
from corral.api.app import create_app
from corral.api.common import ok
from corral.api.schema import REF_PREFIX, _refs
from corral.config import Paths
from corral.service.manager import Manager


def _app(home: Path) -> FastAPI:
    return create_app(Manager(Paths(home)), manage_lifecycle=False)


def test_no_route_builds_a_response_model(tmp_path: Path) -> None:
    app = _app(tmp_path)
    # APIRoute or the docs' own, the console's WebSocket, and the web page's static files
    assert all(isinstance(r, Route | WebSocketRoute) or (isinstance(r, Mount) and
                                                         r.path == "/static")
               for r in app.routes)
    routes = [r for r in app.routes if isinstance(r, APIRoute)]
    assert len(routes) >= 50
    for route in routes:
        assert route.response_field is None, route.path
        assert not route.response_fields, route.path
    assert app.openapi_schema is None


def test_the_views_components_are_made_with_the_schema(tmp_path: Path) -> None:
    app = _app(tmp_path)
    schema = app.openapi()
    components: dict[str, Any] = schema["components"]["schemas"]
    assert _refs(schema) <= components.keys()
    assert {"VM", "VMDisk", "VMNic", "Error", "Router", "Leg", "Forward",
            "FirewallRule"} <= components.keys()
    assert list(components) == sorted(components)
    assert set(components["VM"]["required"]) >= {"name", "state", "nics", "disks"}
    assert components["VM"]["properties"]["nics"]["items"] == {"$ref": REF_PREFIX + "VMNic"}
    vms = schema["paths"]["/v1/vms"]["get"]["responses"]["200"]["content"]
    assert vms["application/json"]["schema"] == {"type": "array",
                                                 "items": {"$ref": REF_PREFIX + "VM"}}
    assert app.openapi() is schema  # made once


def test_routes_document_views_only() -> None:
    responses = ok(views.Snapshot, 404, status=201)
    assert responses[201]["content"]["application/json"]["schema"] == {
        "$ref": REF_PREFIX + "Snapshot"}
    assert all("model" not in r for r in responses.values())
    for not_a_view in (dict, list[int], int, Any):
        with pytest.raises(TypeError):
            ok(not_a_view)
