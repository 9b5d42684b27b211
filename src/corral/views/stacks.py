"""The views of settings and stacks."""

from __future__ import annotations

from typing import Any

from corral.views._typed import Error, NotRequired, TypedDict


class Setting(TypedDict):
    key: str
    value: Any
    source: str  # default, FILE:LINE, environment VAR, --set KEY, corral host set
    env: str | None
    live: bool  # may change while the daemon runs (corral host set)
    doc: str


class Config(TypedDict):
    file: str | None  # the configuration file in use
    settings: list[Setting]


class SettingChange(TypedDict):
    key: str
    old: Any
    value: Any
    source: str


class FieldChange(TypedDict):
    field: str
    old: Any
    new: Any
    how: str  # live, restart or replace


class StackChange(TypedDict):
    id: str  # KIND/NAME
    kind: str
    name: str
    action: str  # create, finish, update, restart, replace, remove, keep
    line: int | None
    fields: list[FieldChange]
    reason: str | None
    spec: dict[str, Any]
    deps: list[str]


class StackPlan(TypedDict):
    stack: str
    file: str
    changes: list[StackChange]
    summary: dict[str, int]
    noop: bool


class StackEvent(TypedDict):
    event: str  # plan, begin, done, failed, skipped, end
    id: NotRequired[str]
    action: NotRequired[str]
    seconds: NotRequired[float]
    plan: NotRequired[StackPlan]
    ok: NotRequired[bool]
    failed: NotRequired[str]
    error: NotRequired[Error]


class Stack(TypedDict):
    name: str
    file: str
    status: str  # applying, applied, failed, removing
    error: str | None
    updated_at: float
    counts: dict[str, int]
    pending: list[str]
    # {id, kind, name, state (pending: being made or cut short; made), spec}
    resources: NotRequired[list[dict[str, Any]]]
