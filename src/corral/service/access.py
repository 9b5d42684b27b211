"""Who is asking: the principal of the request being served, and what it may see.

The API's one authorization seam (:mod:`corral.api.auth`) turns each request into a
:class:`Principal` and sets it for the request with :func:`acting_as`; the service reads it
only here. The lookups of every project-owned object (VMs in the runtime, disks, networks,
routers; snapshots, NICs and guest calls go through their VM) ask :func:`visible`, so an
object of another project is *not found* (404, not 403: its name does not leak), and the
lists keep only what is visible. New objects go to :func:`project_for_new`.

Outside a request (adoption, the admission queue, background watchers) the principal is
:data:`SYSTEM`: the daemon itself, over every project. Background tasks are started in a
fresh context (:func:`detached`), so work a request set going never keeps its principal.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

ROLES = ("viewer", "operator", "admin")  # each may do all that the ones before it may
DEFAULT_PROJECT = "default"


@dataclass(frozen=True)
class Principal:
    """A token (``name``, ``role``, ``project``) or the local socket ("local", admin).

    ``project`` None: every project (admins: the local socket, the daemon itself and admin
    tokens); ``selected``: the project an admin picked for its request (``?project=``),
    where new objects go and to which lists are narrowed; ``home``: where an admin's new
    objects go when it selected none (an admin token's own project)."""

    name: str
    role: str
    project: str | None
    selected: str | None = None
    home: str = DEFAULT_PROJECT

    def allows(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)

    @property
    def scope(self) -> str | None:
        """The one project this principal sees, or None for all of them."""
        return self.project if self.project is not None else self.selected


SYSTEM = Principal("local", "admin", None)
_current: contextvars.ContextVar[Principal] = contextvars.ContextVar("corral_principal",
                                                                      default=SYSTEM)


def current() -> Principal:
    return _current.get()


@contextmanager
def acting_as(principal: Principal) -> Iterator[None]:
    token = _current.set(principal)
    try:
        yield
    finally:
        _current.reset(token)


def visible(project: str) -> bool:
    """Whether the current principal may see an object of ``project``."""
    p = _current.get()
    return p.project is None or p.project == project


def in_scope(project: str) -> bool:
    """Whether an object of ``project`` belongs in the current principal's lists (a local
    caller that selected a project sees only that one)."""
    scope = _current.get().scope
    return scope is None or scope == project


def project_for_new() -> str:
    """The project a new object of the current principal goes to."""
    p = _current.get()
    return p.scope or p.home


def detached(work: Awaitable[Any], name: str | None = None) -> asyncio.Task[Any]:
    """A task for ``work`` that runs as :data:`SYSTEM`, whoever started it."""
    async def run() -> Any:
        return await work

    coro = work if isinstance(work, Coroutine) else run()
    return asyncio.get_running_loop().create_task(coro, name=name,
                                                  context=contextvars.Context())
