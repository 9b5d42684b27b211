"""The one error tree of Corral.

Every error Corral raises on purpose derives from :class:`CorralError`. Front doors map the
tree onto exit codes and HTTP statuses, so a user never sees a traceback for their own mistake::

    CorralError                      (500 / exit 1)  a failure inside Corral or the host
    ├── InvalidSpec                  (422 / exit 2)  a bad value; ``field`` says which
    │   └── PathNotAllowed                           a client-named path the daemon will not open
    ├── NotFound                     (404 / exit 3)  no VM or image of that name
    ├── AlreadyExists                (409 / exit 4)  the name is taken
    ├── InvalidState                 (409 / exit 5)  not legal in the VM's current state
    │   └── InUse                                    a network, router or disk still in use
    ├── Timeout                      (504 / exit 6)  it did not happen in time
    ├── CommandFailed                (500 / exit 1)  a host command failed (argv, returncode)
    │   └── LaunchFailed                             QEMU would not start
    ├── MonitorError                 (500 / exit 1)  QMP refused (qmp_command, error_class)
    ├── NoCapacity                   (409 / exit 9)  the host is full and queueing was refused
    ├── NeedsRoot                    (403 / exit 10) only a daemon running as root can do it
    ├── AgentError                   (502 / exit 7)  the guest agent failed or was silent
    ├── DiskFull                     (507 / exit 11) the host's disk is full
    ├── DaemonUnavailable            (503 / exit 8)  the CLI or Client cannot reach ``corral serve``
    ├── TooLarge                     (413 / exit 2)  a request body over the daemon's limit
    ├── MigrationFailed              (500 / exit 12) a live migration failed; the guest runs
                                                     where it was (``phase``: where it failed)
    ├── Unauthorized                 (401 / exit 13) a missing, malformed, expired or revoked token
    ├── Forbidden                    (403 / exit 14) the token's role may not do that
    ├── QuotaExceeded                (409 / exit 15) over a project's quota; ``quota`` names it
    ├── RateLimited                  (429 / exit 16) too many requests; ``retry_after`` seconds
    ├── Untrusted                    (exit 17)       the daemon's certificate is not the one
    │                                                trusted; ``fingerprint`` is what it showed
    ├── StoreUnavailable             (503 / exit 18) the cluster's PostgreSQL cannot be reached
    └── HostUnavailable              (503 / exit 19) a cluster host is down or does not answer

Errors cross the wire whole: :meth:`CorralError.to_dict` gives the body of an error answer,
``{"error": kind, "kind": kind, "message": one line, "facts": {...}}`` (the facts are also
repeated at the top level, where older clients read them), and :func:`from_dict` turns such
a body back into the same class with the same facts, which is how ``corral.Client`` raises
what the daemon raised. Every class names its facts in ``facts`` (``InvalidState``: ``vm``
(the object's name), ``what`` (``"VM"``, ``"disk"``, ``"image"``, …), ``operation``,
``state``, ``required``; ``InUse`` adds ``users``; ``InvalidSpec``: ``field``;
``CommandFailed``: ``argv``, ``returncode``, ``stderr``, ``stdout``; ``MonitorError``:
``qmp_command``, ``error_class``).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing (and collections) are slow to import; the CLI imports this
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any


class CorralError(Exception):
    """Root of every error Corral raises on purpose."""

    status = 500
    exit_code = 1
    kind = "error"
    fact_names: tuple[str, ...] = ()

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def facts(self) -> dict[str, object]:
        """The facts of this error (its attributes named in ``fact_names``), JSON-ready."""
        out: dict[str, object] = {}
        for name in self.fact_names:
            value = getattr(self, name, None)
            out[name] = list(value) if isinstance(value, tuple) else value
        return out

    def to_dict(self) -> dict[str, object]:
        """The body of an error answer (see the module docstring)."""
        facts = self.facts()
        return {**facts, "error": self.kind, "kind": self.kind, "message": self.message,
                "facts": facts}


class InvalidSpec(CorralError):
    """A value in a request is wrong; ``field`` names it."""

    status = 422
    exit_code = 2
    kind = "invalid_spec"
    fact_names: tuple[str, ...] = ("field",)

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def not_a_name(name: object) -> str:
    """What is said of a name (VM, network, disk, pool …) off the rule, and the rule."""
    shown = name if not isinstance(name, str) or len(name) <= 40 else name[:40] + "…"
    return (f"{shown!r} is not a valid name; use 1-32 lowercase letters, digits and '-', "
            "starting with a letter or digit")


class PathNotAllowed(InvalidSpec):
    """A request names a host path the daemon may not open for it: outside every directory
    of the ``paths.allowed`` setting, or one it never opens for a client (a file to write).
    ``setting`` names the setting that would allow it, if any."""

    kind = "path_not_allowed"
    fact_names = ("field", "path", "setting")

    def __init__(self, field: str, path: str, message: str,
                 setting: str | None = None) -> None:
        super().__init__(field, message)
        self.path = path
        self.setting = setting


class NotFound(CorralError):
    status = 404
    exit_code = 3
    kind = "not_found"


class AlreadyExists(CorralError):
    status = 409
    exit_code = 4
    kind = "already_exists"


class InvalidState(CorralError):
    """An operation was asked for in a state where it is not legal. ``vm`` names the object
    (a VM unless ``what`` says otherwise: ``"disk"``, ``"image"``, ``"network"`` …)."""

    status = 409
    exit_code = 5
    kind = "invalid_state"
    fact_names: tuple[str, ...] = ("vm", "what", "operation", "state", "required")

    def __init__(self, vm: str, operation: str, state: str, required: Sequence[str], *,
                 what: str = "VM", because: str | None = None) -> None:
        why = f": {because}" if because else f" (needs {', '.join(required) or 'no state'})"
        super().__init__(f"cannot {operation} {what} '{vm}': it is {state}{why}")
        self.vm = vm
        self.what = what
        self.operation = operation
        self.state = state
        self.required = tuple(required)


class InUse(InvalidState):
    """Something cannot go (or change) while others use it; ``users`` names them."""

    fact_names = (*InvalidState.fact_names, "users")

    def __init__(self, what: str, name: str, operation: str, users: Sequence[str]) -> None:
        super().__init__(name, operation, "in use", ["unused"], what=what)
        self.message = f"cannot {operation} {what} '{name}': used by {', '.join(users)}"
        self.args = (self.message,)
        self.users = tuple(users)


class Timeout(CorralError):
    status = 504
    exit_code = 6
    kind = "timeout"


class CommandFailed(CorralError):
    """A host command exited non-zero; carries argv, returncode and the tail of stderr."""

    kind = "command_failed"
    fact_names = ("argv", "returncode", "stderr", "stdout")

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str = "",
                 stdout: str = "", what: str | None = None) -> None:
        tail = stderr.strip().splitlines()[-5:]
        head = what or f"{argv[0] if argv else '?'} failed"
        detail = f" (exit {returncode})" + (": " + " | ".join(tail) if tail else "")
        super().__init__(head + detail)
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        self.stdout = stdout


class LaunchFailed(CommandFailed):
    kind = "launch_failed"


class MonitorError(CorralError):
    kind = "monitor_error"
    fact_names = ("qmp_command", "error_class")

    def __init__(self, qmp_command: str, error_class: str, desc: str) -> None:
        super().__init__(f"QEMU refused {qmp_command}: {desc} ({error_class})")
        self.qmp_command = qmp_command
        self.error_class = error_class


class NoCapacity(CorralError):
    """Not enough capacity to start now, and the caller asked not to queue."""

    status = 409
    exit_code = 9
    kind = "no_capacity"


class NeedsRoot(CorralError):
    """Bridges, taps, namespaces and nftables need a daemon that runs as root."""

    status = 403
    exit_code = 10
    kind = "needs_root"


class AgentError(CorralError):
    status = 502
    exit_code = 7
    kind = "agent_error"


class DiskFull(CorralError):
    """The host ran out of disk space; nothing was changed."""

    status = 507
    exit_code = 11
    kind = "disk_full"


class DaemonUnavailable(CorralError):
    status = 503
    exit_code = 8
    kind = "daemon_unavailable"


class StoreUnavailable(CorralError):
    """The cluster's store (PostgreSQL) cannot be reached: nothing was changed. Running VMs
    keep running; the daemon reconnects by itself."""

    status = 503
    exit_code = 18
    kind = "store_unavailable"


class HostUnavailable(CorralError):
    """A cluster host is down, cordoned away or did not answer in time; ``host`` names it."""

    status = 503
    exit_code = 19
    kind = "host_unavailable"
    fact_names = ("host",)

    def __init__(self, message: str, host: str = "") -> None:
        super().__init__(message)
        self.host = host


class TooLarge(CorralError):
    """A request body (or one of its values) is larger than the daemon accepts."""

    status = 413
    exit_code = 2
    kind = "too_large"
    fact_names = ("limit",)

    def __init__(self, message: str, limit: int = 0) -> None:
        super().__init__(message)
        self.limit = limit


class MigrationFailed(CorralError):
    """A live migration failed, was cancelled or could not converge; the guest keeps running
    on the source."""

    exit_code = 12
    kind = "migration_failed"
    fact_names = ("phase",)

    def __init__(self, message: str, phase: str = "") -> None:
        super().__init__(message)
        self.phase = phase


class Unauthorized(CorralError):
    """No valid token: missing, malformed, unknown, expired or revoked."""

    status = 401
    exit_code = 13
    kind = "unauthorized"


class Forbidden(CorralError):
    """The token is valid but its role may not do this."""

    status = 403
    exit_code = 14
    kind = "forbidden"
    fact_names = ("role", "required")

    def __init__(self, message: str, role: str = "", required: str = "") -> None:
        super().__init__(message)
        self.role = role
        self.required = required


class QuotaExceeded(CorralError):
    """The request would take a project over one of its quotas."""

    status = 409
    exit_code = 15
    kind = "quota_exceeded"
    fact_names = ("project", "quota", "limit", "requested")

    def __init__(self, message: str, project: str = "", quota: str = "", limit: int = 0,
                 requested: int = 0) -> None:
        super().__init__(message)
        self.project = project
        self.quota = quota
        self.limit = limit
        self.requested = requested


class RateLimited(CorralError):
    """Too many requests from one token; try again after ``retry_after`` seconds."""

    status = 429
    exit_code = 16
    kind = "rate_limited"
    fact_names = ("retry_after",)

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Untrusted(CorralError):
    """The daemon showed a TLS certificate this side does not trust (client side only)."""

    status = 495
    exit_code = 17
    kind = "untrusted"
    fact_names = ("fingerprint",)

    def __init__(self, message: str, fingerprint: str = "") -> None:
        super().__init__(message)
        self.fingerprint = fingerprint


def as_corral_error(err: Exception) -> CorralError:
    """What any exception answers: itself when it is Corral's, a full disk, or (a bug) an
    internal error, still one line in Corral's shape (the traceback goes to the log)."""
    if isinstance(err, CorralError):
        return err
    import errno

    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return DiskFull(f"the host's disk is full ({err.filename or 'a write'}); free "
                        "some space and try again")
    return CorralError(f"internal error: {type(err).__name__}: {err}"[:300])


def _classes() -> list[type[CorralError]]:
    out: list[type[CorralError]] = [CorralError]
    for cls in out:
        out.extend(cls.__subclasses__())
    return out


def from_dict(body: dict[str, Any], status: int = 500) -> CorralError:
    """The error an error answer's ``body`` describes: the class of its ``kind`` (``InUse``
    when an ``invalid_state`` carries ``users``; the root class for kinds this side does not
    know, such as a newer daemon's), with the same message and facts. Bodies of older
    daemons (facts at the top level only) are read too."""
    kind = str(body.get("kind") or body.get("error") or "error")
    message = str(body.get("message") or f"daemon answered {status}")
    raw = body.get("facts")
    facts: dict[str, Any] = raw if isinstance(raw, dict) else body
    same = [c for c in _classes() if c.__module__ == __name__ and c.kind == kind]
    # of the classes sharing a kind: the one missing fewest facts, then the most specific
    cls = max(same or [CorralError], key=lambda c: (
        -sum(n not in facts for n in c.fact_names), len(c.fact_names)))
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.message = message
    for name in cls.fact_names:
        value = facts.get(name)
        setattr(err, name, tuple(value) if isinstance(value, list) and name in
                ("required", "users") else value)
    if isinstance(err, InvalidState) and not err.what:
        err.what = "VM"
    if cls.status != status and status >= 400:
        err.status = status
    return err


__all__ = [
    "AgentError", "AlreadyExists", "CommandFailed", "CorralError", "DaemonUnavailable",
    "DiskFull", "Forbidden", "HostUnavailable", "InUse", "InvalidSpec", "InvalidState",
    "LaunchFailed", "MigrationFailed", "MonitorError", "NeedsRoot", "NoCapacity", "NotFound",
    "PathNotAllowed", "QuotaExceeded", "RateLimited", "StoreUnavailable", "Timeout", "TooLarge",
    "Unauthorized", "Untrusted", "as_corral_error", "from_dict", "not_a_name",
]
