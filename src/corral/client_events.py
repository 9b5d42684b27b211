"""The event calls of ``corral.Client``: the event log, following it live, and where the
web page is (the routes of :mod:`corral.api.events` and :mod:`corral.api.web`)."""

from __future__ import annotations

import json

from corral import errors
from corral.wire import Connection, error, integer, seg

TYPE_CHECKING = False  # typing is slow to import; the CLI must start in milliseconds
if TYPE_CHECKING:
    import builtins
    from collections.abc import Iterator

    from corral import views

MAX_ID = (1 << 63) - 1


class EventCalls(Connection):
    def events(self, since: int = 0, vm: str | None = None, project: str | None = None,
               tail: int | None = None) -> builtins.list[views.Event]:
        """Up to 1000 events after id ``since`` (``tail``: only the last ``tail``):
        ``vm``'s only, ``project``'s only (a token sees its own project's only)."""
        out: builtins.list[views.Event] = self.request(
            "GET", "/events", since=integer(since, "since", 0, MAX_ID),
            vm=None if vm is None else (seg(vm, "vm") and vm),
            project=None if project is None else (seg(project, "project") and project),
            tail=integer(tail, "tail", 1, 10000))
        return out

    def follow_events(self, since: int | None = None, vm: str | None = None
                      ) -> Iterator[views.Event]:
        """Every event as the daemon commits it, for as long as the caller iterates: those
        after id ``since`` first (when given). A stream the daemon drops (this client fell
        behind) or that breaks is resumed from the last event, so none is missed or repeated.

        :raises DaemonUnavailable: the daemon is not running (or went away).
        """
        import time

        from corral.wire import Transport

        integer(since, "since", 0, MAX_ID)
        if vm is not None:
            seg(vm, "vm")
        while True:
            query = "&".join(f"{k}={v}" for k, v in (("since", since), ("vm", vm))
                             if v is not None)
            # its own connection (the stream is not reused), as this client connects:
            # heartbeats come every 15 s
            conn = Transport(self.socket_path, 60.0, self._conn.tls, self._conn.headers)
            try:
                for status, line in conn.stream_lines("GET", "/v1/events/stream?" + query, b""):
                    if status >= 400:
                        raise error(status, json.loads(line) if line.strip() else {})
                    if line.startswith(b"data: {\"id\""):
                        event: views.Event = json.loads(line[6:])
                        since = event["id"]
                        yield event
            except (FileNotFoundError, ConnectionRefusedError) as err:
                raise errors.DaemonUnavailable(
                    f"the Corral daemon is not running at {self.socket_path}") from err
            except (ConnectionResetError, TimeoutError):
                pass  # resumed below from the last event seen
            finally:
                conn.close()
            time.sleep(0.2)  # dropped, or the daemon is stopping: it may refuse us next
            if since is None:
                since = 0 if not (last := self.events(tail=1)) else last[0]["id"]

    def web_info(self) -> views.WebInfo:
        """Where the daemon serves its web page (``url`` None: not on TCP)."""
        out: views.WebInfo = self.request("GET", "/web")
        return out
