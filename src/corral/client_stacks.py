"""The stack and settings calls of ``corral.Client`` (the routes of :mod:`corral.api.stacks`):
plan, apply and remove stacks, with their progress as it comes; the settings in force and
live changes of them."""

from __future__ import annotations

import json

from corral import errors
from corral.wire import Connection, error, seg

TYPE_CHECKING = False  # typing is slow to import; the CLI must start in milliseconds
if TYPE_CHECKING:
    import builtins
    from collections.abc import Iterator
    from typing import Any

    from corral import views


class StackCalls(Connection):
    def stack_plan(self, text: str, file: str = "stack.yaml", name: str | None = None
                   ) -> views.StackPlan:
        """What applying the stack file ``text`` would create, change and remove.

        :raises InvalidSpec: the file is wrong (the message names file, line and field).
        """
        out: views.StackPlan = self.request("POST", "/stacks/plan",
                                            {"file": file, "text": text, "name": name})
        return out

    def stack_apply(self, text: str, file: str = "stack.yaml", name: str | None = None,
                    dry_run: bool = False) -> Iterator[views.StackEvent]:
        """Apply a stack file; yields its events as they come (``plan`` first, ``end``
        last). A failed resource is told by the ``end`` event (``ok`` false), not raised.

        :raises InvalidSpec: the file is wrong. :raises InvalidState: the stack is being
            applied already.
        """
        query = "?dry_run=true" if dry_run else ""
        body = {"file": file, "text": text, "name": name}
        return self._events("POST", f"/v1/stacks/apply{query}", body)

    def stack_rm(self, name: str) -> Iterator[views.StackEvent]:
        """Remove a stack's resources, dependents first, then the stack; yields events."""
        return self._events("DELETE", f"/v1/stacks/{seg(name)}", None)

    def stack_list(self) -> builtins.list[views.Stack]:
        out: builtins.list[views.Stack] = self.request("GET", "/stacks")
        return out

    def stack_show(self, name: str) -> views.Stack:
        out: views.Stack = self.request("GET", f"/stacks/{seg(name)}")
        return out

    def stack_schema(self) -> dict[str, Any]:
        out: dict[str, Any] = self.request("GET", "/stacks-schema")
        return out

    def config(self) -> views.Config:
        """Every setting in force in the daemon and where it came from."""
        out: views.Config = self.request("GET", "/config")
        return out

    def host_set(self, key: str, value: str) -> views.SettingChange:
        """Change a live setting of the daemon now (``cpu-ratio``, ``queue-policy`` …).

        :raises InvalidSpec: no such setting, it needs a restart, or a bad value.
        """
        import urllib.parse  # not on the CLI's lean path

        out: views.SettingChange = self.request(
            "PUT", f"/config/{urllib.parse.quote(key, safe='')}", {"value": str(value)})
        return out

    def _events(self, method: str, url: str, body: Any) -> Iterator[views.StackEvent]:
        payload = json.dumps(body).encode() if body is not None else b""
        try:
            for status, line in self._conn.stream_lines(method, url, payload):
                event = json.loads(line) if line.strip() else None
                if status >= 400:
                    raise error(status, event if isinstance(event, dict) else {})
                if event:
                    yield event
        except (FileNotFoundError, ConnectionRefusedError) as err:
            raise errors.DaemonUnavailable(
                f"the Corral daemon is not running at {self.socket_path}; start it with "
                "'corral serve' (or set CORRAL_SOCKET)") from err
