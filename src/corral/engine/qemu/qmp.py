"""A narrow typed facade over ``qemu.qmp``: one monitor connection per VM.

QEMU serves one QMP client at a time, so the daemon is the only one that ever connects.
Every event goes to one callback; ``qemu.qmp``'s default listener keeps events in an
unbounded queue, so one task drains it for the life of the connection. ``qemu.qmp`` types
stay inside this module: callers see dicts and :class:`~corral.errors.MonitorError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from qemu.qmp import ExecuteError, QMPClient, QMPError, Runstate
from qemu.qmp.message import Message
from qemu.qmp.models import ErrorResponse
from qemu.qmp.qmp_client import BadReplyError, ExecInterruptedError

from corral.errors import MonitorError, Timeout

log = logging.getLogger(__name__)
EventHandler = Callable[[str, dict[str, Any]], None]

# qemu.qmp logs every disconnect as an error; Corral reports exits itself.
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)


class _Client(QMPClient):
    """``qemu.qmp``'s client, its protocol untouched (framing, ids, the routing of replies
    and events by its reader task, its errors), with a shorter way out for a command.

    * Its hooks for every message in and out log it at debug level, but format it (as
      indented JSON, through the pure-Python encoder) before the log is asked whether it
      wants it: that cost a pause more than the rest of the QMP exchange. Here it happens
      only when debug logging is on.
    * :meth:`run` is ``execute`` with the message built and serialized once (``execute``
      copies it twice and serializes it three times) and written at once, not handed to
      the writer task through a queue (a turn of the event loop). The reply comes back the
      library's way: its reader task puts it in the queue registered under the message's id.
    """

    def _cb_outbound(self, msg: Message) -> Message:
        return super()._cb_outbound(msg) if self.logger.isEnabledFor(logging.DEBUG) else msg

    def _cb_inbound(self, msg: Message) -> Message:
        return super()._cb_inbound(msg) if self.logger.isEnabledFor(logging.DEBUG) else msg

    async def run(self, command: str, arguments: Mapping[str, object] | None) -> object:
        """What ``execute(command, arguments)`` returns and raises."""
        if self.runstate is not Runstate.RUNNING or not self._outgoing.empty():
            return await self.execute(command, arguments)  # (in order behind what waits)
        exec_id = self._get_exec_id()
        body: dict[str, object] = {"execute": command}
        if arguments is not None:
            body["arguments"] = arguments
        body["id"] = exec_id
        msg = Message(body, eager=False)
        queue: asyncio.Queue[Message | ExecInterruptedError] = asyncio.Queue(maxsize=1)
        self._pending[exec_id] = queue
        try:
            self._do_send(self._cb_outbound(msg))
            reply = await queue.get()
        finally:
            del self._pending[exec_id]
        if isinstance(reply, ExecInterruptedError):
            raise reply
        if "error" in reply:
            try:
                error = ErrorResponse(reply)
            except (KeyError, TypeError) as err:
                raise BadReplyError("QMP error reply is malformed", reply, msg) from err
            raise ExecuteError(error, msg, reply)
        if "return" not in reply:
            raise BadReplyError("QMP reply is missing a 'error' or 'return' member", reply, msg)
        return reply["return"]


class Monitor:
    """The QMP connection of one VM."""

    def __init__(self, name: str, on_event: EventHandler) -> None:
        self.name = name
        self._client = _Client(name)
        self._on_event = on_event
        self._drain: asyncio.Task[None] | None = None

    async def connect(self, path: Path, timeout: float = 10.0) -> None:
        """Connect and negotiate capabilities.

        :raises Timeout: when the monitor does not answer in ``timeout`` seconds.
        """
        try:
            await asyncio.wait_for(self._client.connect(str(path)), timeout)
        except (TimeoutError, QMPError, OSError) as err:
            raise Timeout(f"QEMU monitor of '{self.name}' did not answer at {path}: {err}") from err
        self._drain = asyncio.create_task(self._pump(), name=f"qmp-events-{self.name}")

    async def _pump(self) -> None:
        async for event in self._client.events:
            try:
                data = event.get("data", {})
                self._on_event(str(event["event"]), dict(data) if isinstance(data, dict) else {})
            except Exception:  # one bad handler must not stop the stream
                log.exception("event handler failed for %s", self.name)

    async def execute(self, command: str, arguments: Mapping[str, object] | None = None,
                      timeout: float = 30.0) -> Any:
        """Run a QMP command and return its result.

        :raises MonitorError: when QEMU refuses it or the connection is gone.
        :raises Timeout: when QEMU does not answer in ``timeout`` seconds.
        """
        try:
            # (asyncio.timeout, not wait_for: no task of its own, so no extra turns of the
            # loop on the hot path of every pause and resume)
            async with asyncio.timeout(timeout):
                return await self._client.run(command, arguments)
        except ExecuteError as err:
            raise MonitorError(command, err.error_class, str(err)) from err
        except TimeoutError as err:
            raise Timeout(f"QEMU did not answer {command} in {timeout} s") from err
        except (QMPError, OSError, EOFError) as err:
            raise MonitorError(command, "Disconnected", f"monitor connection lost ({err})") from err

    async def send_fd(self, fd: int, name: str) -> None:
        """Hand QEMU an open file descriptor (SCM_RIGHTS) under ``name`` (``getfd``), for
        ``fd:NAME`` migration URIs: QEMU never opens a path of ours, and no shell runs."""
        try:
            self._client.send_fd_scm(fd)
        except (QMPError, OSError) as err:
            raise MonitorError("getfd", "Disconnected", f"cannot pass a file ({err})") from err
        await self.execute("getfd", {"fdname": name})

    async def wait_migration(self, timeout: float = 600.0) -> dict[str, Any]:
        """Poll ``query-migrate`` until the migration completes.

        :raises MonitorError: when it fails (QEMU's reason in the message).
        :raises Timeout: when it is still running after ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.001
        while True:
            info: dict[str, Any] = await self.execute("query-migrate")
            status = info.get("status")
            if status == "completed":
                return info
            if status in ("failed", "cancelled"):
                raise MonitorError("migrate", "MigrationFailed",
                                   str(info.get("error-desc", status)))
            if loop.time() > deadline:
                raise Timeout(f"migration still {status} after {timeout:g} s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.005)

    async def close(self) -> None:
        """Disconnect; never raises (QEMU may have closed the socket first)."""
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._drain
            self._drain = None
        with contextlib.suppress(Exception):
            await self._client.disconnect()
