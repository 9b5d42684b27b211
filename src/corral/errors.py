"""The one error tree of Corral.

Every error Corral raises on purpose derives from :class:`CorralError`. Front doors map the
tree onto exit codes and HTTP statuses, so a user never sees a traceback for their own mistake::

    CorralError                      (500 / exit 1)  a failure inside Corral or the host
    ├── InvalidSpec                  (422 / exit 2)  a bad value; ``field`` says which
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
    └── DaemonUnavailable            (503 / exit 8)  the CLI or Client cannot reach ``corral serve``
"""

from __future__ import annotations

from collections.abc import Sequence


class CorralError(Exception):
    """Root of every error Corral raises on purpose."""

    status = 500
    exit_code = 1
    kind = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, object]:
        return {"error": self.kind, "message": self.message}


class InvalidSpec(CorralError):
    """A value in a request is wrong; ``field`` names it."""

    status = 422
    exit_code = 2
    kind = "invalid_spec"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "field": self.field}


class NotFound(CorralError):
    status = 404
    exit_code = 3
    kind = "not_found"


class AlreadyExists(CorralError):
    status = 409
    exit_code = 4
    kind = "already_exists"


class InvalidState(CorralError):
    """An operation was asked for in a state where it is not legal."""

    status = 409
    exit_code = 5
    kind = "invalid_state"

    def __init__(self, vm: str, operation: str, state: str, required: Sequence[str]) -> None:
        need = ", ".join(required) if required else "no state"
        super().__init__(f"cannot {operation} VM '{vm}': it is {state} (needs {need})")
        self.vm = vm
        self.operation = operation
        self.state = state
        self.required = tuple(required)

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "vm": self.vm, "state": self.state,
                "required": list(self.required)}


class InUse(InvalidState):
    """Something cannot go (or change) while others use it; ``users`` names them."""

    def __init__(self, what: str, name: str, operation: str, users: Sequence[str]) -> None:
        super().__init__(name, operation, "in use", ["unused"])
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


__all__ = [
    "AgentError", "AlreadyExists", "CommandFailed", "CorralError", "DaemonUnavailable", "DiskFull",
    "InUse",
    "InvalidSpec", "InvalidState", "LaunchFailed", "MonitorError", "NeedsRoot", "NoCapacity",
    "NotFound", "Timeout",
]
