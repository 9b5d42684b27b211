"""The app the daemon serves from its first moment, before FastAPI is even imported.

Loading FastAPI and building the routes costs more CPU than opening the store and taking up
twenty VMs, so a restarted daemon does them in this order:

1. The sockets are bound and served at once (:mod:`corral.daemon`); this app answers.
2. The service opens in the background (:class:`~corral.api.opening.Opening`: the store,
   the re-adoption of every VM, networks, the queue, pools).
3. Once it is open, the API (FastAPI, the routes, the middleware) is loaded on a thread of
   its own (:class:`Loader`), so the event loop goes on answering meanwhile; from then on
   every request goes straight to it.

Until the API is loaded, the unix socket answers the local admin's list of VMs
(``GET /v1/vms`` without a query, a token or a project: ``corral list``,
``Client.list()``) as soon as the open has taken up every VM (the networks, the queue and
the pools may still be opening: the list does not depend on them), each as adoption found
it: the answer the API gives (:func:`corral.api.fastlane.answer`, as the principal ``local``
that :class:`corral.api.auth.Guard` gives such a request, counted in the request metrics).
Every other request, and every request on a TCP listener (which needs a token), waits until
the API is loaded and is then answered as always. A service that could not open answers
every request with why (as :class:`~corral.api.opening.OpenGate` does); in a cluster the
list waits for the API too (the API answers every host's VMs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from corral.api import fastlane
from corral.api.names import API
from corral.api.opening import Opening, refuse
from corral.errors import CorralError
from corral.service import access

if TYPE_CHECKING:
    from corral.service.manager import Manager

log = logging.getLogger(__name__)
_EARLY = (b"authorization", b"x-corral-project")  # a request with these waits for the API
TURNS = 4  # of the loop between the open and the API's load: a list waiting is answered


class Loader:
    """Loads the API (``build``: one app per listener) on a thread of its own, once the
    service is open; the apps, or why there are none, are then in :attr:`apps` and
    :attr:`error`."""

    def __init__(self, build: Callable[[], list[Any]],
                 on_failure: Callable[[BaseException], None] | None = None) -> None:
        self.build = build
        self.on_failure = on_failure
        self.apps: list[Any] = []
        self.error: str | None = None
        self.done = asyncio.Event()
        self._starting: asyncio.Task[None] | None = None

    def after(self, opening: asyncio.Task[None]) -> None:
        """Load once ``opening`` is done (not when it failed or was cancelled: then every
        request is answered with why)."""
        opening.add_done_callback(self._opened)

    def _opened(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            self._loaded([], "the daemon is stopping")
        elif task.exception() is not None:
            self._loaded([], f"the daemon could not open: {task.exception()}")
        else:
            self._starting = asyncio.get_running_loop().create_task(self._start())

    async def _start(self) -> None:
        """Start the thread once the requests that waited for the open are answered (a few
        turns of the loop): it would hold the interpreter while they are made."""
        for _ in range(TURNS):
            await asyncio.sleep(0)
        loop = asyncio.get_running_loop()

        def run() -> None:
            try:
                apps, error = self.build(), None
            except Exception as err:  # a bug: said once, and the daemon stops
                log.exception("the daemon could not load its API")
                apps, error = [], err
            with contextlib.suppress(RuntimeError):  # the loop is closed: the daemon stopped
                loop.call_soon_threadsafe(self._built, apps, error)

        threading.Thread(target=run, name="corral-api-load", daemon=True).start()

    def _built(self, apps: list[Any], error: Exception | None) -> None:
        if error is not None:
            why = f"the daemon could not load its API: {error}"
            self._loaded([], why)
            if self.on_failure is not None:
                self.on_failure(CorralError(why))
            return
        self._loaded(apps, None)

    def _loaded(self, apps: list[Any], error: str | None) -> None:
        self.apps, self.error = apps, error
        self.done.set()


class Front:
    """ASGI app of one listener: the API once :class:`Loader` has loaded it (its app number
    ``index``), the early list before (``lane``: the unix socket's), and, for the listener
    that owns the service (``owner``), the lifespan that opens and closes it."""

    def __init__(self, manager: Manager, opening: Opening, loader: Loader, index: int,
                 lane: bool = False, owner: bool = False) -> None:
        self.manager, self.opening, self.loader = manager, opening, loader
        self.index, self.lane, self.owner = index, lane, owner
        self.app: Any = None  # the API, once loaded

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        app = self.app
        if app is None:
            if scope["type"] == "lifespan":
                await self._lifespan(receive, send)
                return
            if self.lane and not self.loader.done.is_set() and _early(scope) and \
                    await self._open():
                await self._list(scope, send)
                return
            await self.loader.done.wait()
            if self.loader.error is not None:
                await refuse(scope, send, self.loader.error)
                return
            app = self.app = self.loader.apps[self.index]
        await app(scope, receive, send)

    async def _open(self) -> bool:
        """Wait until the open has taken up every VM (or ended): whether it did, on a
        single host."""
        opening = self.opening.opening
        if opening is None:
            return False
        adopted = self.manager.adopted
        if not opening.done() and not adopted.is_set():
            waiting = asyncio.ensure_future(adopted.wait())
            await asyncio.wait([opening, waiting], return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
        if opening.done() and (opening.cancelled() or opening.exception() is not None):
            return False
        return adopted.is_set() and self.manager.cluster is None

    async def _list(self, scope: dict[str, Any], send: Any) -> None:
        t0, status = time.perf_counter(), 500

        async def seen(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with access.acting_as(access.SYSTEM):
            await fastlane.answer(self.manager.vms.list, scope, seen)
        with contextlib.suppress(CorralError):
            self.manager.metrics.observe_request(API + "/vms", "GET", status,
                                                 time.perf_counter() - t0)

    def start(self) -> None:
        """Open the service in the background, and load the API once it is open."""
        self.opening.start(self.manager.open, self.loader.on_failure)
        assert self.opening.opening is not None
        self.loader.after(self.opening.opening)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        """Open the service in the background at startup (requests wait for it), load the
        API once it is open; close the service at shutdown (its VMs run on)."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.owner:
                    self.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.owner:
                    await self.opening.stop()
                    await self.manager.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _early(scope: dict[str, Any]) -> bool:
    """The local admin's plain list of VMs, which the unix socket answers before the API."""
    return scope["type"] == "http" and scope["method"] == "GET" and \
        scope["path"] == API + "/vms" and not scope.get("query_string") and \
        not any(key in _EARLY for key, _ in scope.get("headers", ()))
