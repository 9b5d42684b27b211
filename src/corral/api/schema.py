"""The OpenAPI schema, made when it is first asked for (``/openapi.json``, ``/docs``) and kept.

Routes document their bodies with ``$ref``\\ s to the views of :mod:`corral.views`
(:func:`view_schema`, used by :func:`corral.api.common.ok`), not with
``responses={status: {"model": View}}``: for a model FastAPI builds a pydantic validator and
serializer per route and status when the route is registered, megabytes a daemon would hold
for a schema it may never serve. The views' JSON schemas are made here instead, once, when
the schema is first generated (:class:`CorralAPI`); nothing of them stays but the schema.
"""

from __future__ import annotations

from typing import Any, get_args, get_origin

from fastapi import FastAPI
from pydantic import TypeAdapter

from corral import views

REF_PREFIX = "#/components/schemas/"


def view_schema(view: Any) -> dict[str, Any]:
    """The schema of a body that is ``view`` (a view of :mod:`corral.views`) or ``list[view]``,
    as a ``$ref`` to the view's component (made by :func:`add_views`).

    :raises TypeError: ``view`` is neither (a mistake in a routes module, found at import).
    """
    if get_origin(view) is list:
        return {"type": "array", "items": view_schema(get_args(view)[0])}
    name = getattr(view, "__name__", "")
    if name not in views.__all__ or getattr(views, name) is not view:
        raise TypeError(f"{view!r} is not a view of corral.views")
    return {"$ref": REF_PREFIX + name}


def _refs(node: Any) -> set[str]:
    """The component names ``node`` refers to, at any depth."""
    if isinstance(node, dict):
        found = {node["$ref"].removeprefix(REF_PREFIX)} if isinstance(node.get("$ref"), str) \
            else set()
        return found.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


def add_views(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with a component for every view it refers to that is not one yet (and for
    the views those refer to); the views' JSON schemas are made now, in serialization mode,
    as FastAPI would have made them for a response model."""
    components: dict[str, Any] = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in sorted(_refs(schema["paths"]) - components.keys()):
        if name not in views.__all__:
            raise LookupError(f"the OpenAPI schema refers to {name!r}, which is no view")
        adapter: TypeAdapter[Any] = TypeAdapter(getattr(views, name))
        made = adapter.json_schema(mode="serialization", ref_template=REF_PREFIX + "{model}")
        for nested, nested_schema in made.pop("$defs", {}).items():
            components.setdefault(nested, nested_schema)
        components[name] = made
    schema["components"]["schemas"] = dict(sorted(components.items()))
    return schema


class CorralAPI(FastAPI):
    """FastAPI whose OpenAPI schema gets the views' components when it is first made."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            self.openapi_schema = add_views(super().openapi())
        return self.openapi_schema
