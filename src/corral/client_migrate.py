"""The live-migration calls of ``corral.Client``: ``migrate`` (with live progress),
``migrate_cancel`` and ``host_drain`` (the routes of :mod:`corral.api.migrate`)."""

from __future__ import annotations

import json

from corral import errors
from corral.wire import Connection, error, integer, seconds, seg

TYPE_CHECKING = False  # typing is slow to import; the CLI must start in milliseconds
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from corral import views


class MigrateCalls(Connection):
    def migrate(self, name: str, to: str, postcopy: bool = False, max_downtime: float = 0.3,
                timeout: float = 600.0, bandwidth: int | None = None,
                progress: Callable[[dict[str, Any]], None] | None = None) -> views.VM:
        """Live-migrate running VM ``name`` to host ``to``; the VM as it runs there, with
        ``migration`` (total time, downtime, bytes, encrypted). ``bandwidth``: bytes per
        second the stream may use (None: as fast as the link). ``progress`` is called with
        each reading (status, transferred, remaining, dirty_rate, expected_downtime …).

        :raises MigrationFailed: it failed, was cancelled or could not converge (the VM runs
            on where it was). :raises InvalidState: it does not run.
        :raises HostUnavailable: ``to`` is not up.
        """
        from corral.wire import Transport

        body = {"to": seg(to, "to") and to, "postcopy": bool(postcopy),
                "max_downtime": seconds(max_downtime, "max_downtime"),
                "timeout": seconds(timeout), "bandwidth": bandwidth}
        url = f"/v1/vms/{seg(name)}/migrate?stream=true&timeout={timeout:g}"
        conn = Transport(self.socket_path, timeout + 120.0, self._conn.tls, self._conn.headers)
        vm: views.VM | None = None
        try:
            for status, line in conn.stream_lines("POST", url, json.dumps(body).encode()):
                for part in line.splitlines():
                    event = json.loads(part) if part.strip() else {}
                    if status >= 400 or "error" in event:
                        raise error(status if status >= 400 else 500, event)
                    if "progress" in event and progress is not None:
                        progress(event["progress"])
                    if "vm" in event:
                        vm = event["vm"]
        except (FileNotFoundError, ConnectionRefusedError, PermissionError) as err:
            raise self.unavailable(err) from err
        finally:
            conn.close()
        if vm is None:
            raise errors.CorralError(f"the daemon's answer about '{name}' ended early")
        return vm

    def migrate_cancel(self, name: str) -> dict[str, Any]:
        """Stop the live migration of ``name`` under way; it runs on where it was.

        :raises InvalidState: none is under way.
        """
        out: dict[str, Any] = self.request("POST", f"/vms/{seg(name)}/migrate/cancel")
        return out

    def host_drain(self, host: str, parallel: int = 1) -> dict[str, Any]:
        """Drain ``host``: it takes no new VMs, and each VM running there is live-migrated
        to a host placement chooses, ``parallel`` at a time. ``{"moves": [...], "left"}``."""
        out: dict[str, Any] = self.request("POST", f"/hosts/{seg(host, 'host')}/evacuate",
                                           parallel=integer(parallel, "parallel", 1, 16))
        return out
