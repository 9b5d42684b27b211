"""VM states and the one table of legal transitions.

A VM moves ``defined → starting → running ⇄ paused``, ``running|paused → stopping → stopped``,
``running|paused → saving → saved → restoring → running``; anything can be destroyed; anything
the daemon sees go wrong (QEMU died, the guest panicked) becomes ``crashed``.

Operations are the user-facing verbs. :data:`OPERATIONS` says from which states each is legal;
:func:`check` refuses the rest with :class:`~corral.errors.InvalidState` naming both the current
and the required states. :data:`TRANSITIONS` is the full from → to graph the service may take,
including the moves that only events cause (a guest powering itself off, a crash).
"""

from __future__ import annotations

import enum

from corral.errors import InvalidState


class State(enum.StrEnum):
    DEFINED = "defined"
    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    STOPPED = "stopped"
    SAVING = "saving"
    SAVED = "saved"
    RESTORING = "restoring"
    CRASHED = "crashed"
    DESTROYED = "destroyed"


S = State

#: States in which a QEMU process exists for the VM.
LIVE = frozenset({S.STARTING, S.RUNNING, S.PAUSED, S.STOPPING, S.SAVING, S.RESTORING})

#: Every move the service may make, whether a user asked or an event caused it.
TRANSITIONS: dict[State, frozenset[State]] = {
    S.DEFINED: frozenset({S.STARTING, S.QUEUED, S.DESTROYED}),
    # a queued saved VM is restored when admitted, or goes back to saved when cancelled
    S.QUEUED: frozenset({S.STARTING, S.RESTORING, S.DEFINED, S.STOPPED, S.SAVED,
                         S.DESTROYED}),
    # a failed start goes back where it came from: defined, stopped or crashed
    S.STARTING: frozenset({S.RUNNING, S.PAUSED, S.DEFINED, S.STOPPED, S.CRASHED,
                           S.DESTROYED}),
    S.RUNNING: frozenset({S.PAUSED, S.STOPPING, S.STOPPED, S.SAVING, S.CRASHED, S.DESTROYED}),
    S.PAUSED: frozenset({S.RUNNING, S.STOPPING, S.STOPPED, S.SAVING, S.CRASHED, S.DESTROYED}),
    S.STOPPING: frozenset({S.STOPPED, S.RUNNING, S.PAUSED, S.CRASHED, S.DESTROYED}),
    S.STOPPED: frozenset({S.STARTING, S.QUEUED, S.DESTROYED}),
    S.SAVING: frozenset({S.SAVED, S.RUNNING, S.PAUSED, S.CRASHED, S.DESTROYED}),
    S.SAVED: frozenset({S.RESTORING, S.QUEUED, S.STOPPED, S.DESTROYED}),
    S.RESTORING: frozenset({S.RUNNING, S.PAUSED, S.SAVED, S.CRASHED, S.DESTROYED}),
    S.CRASHED: frozenset({S.STARTING, S.QUEUED, S.STOPPED, S.DESTROYED}),
    S.DESTROYED: frozenset(),
}

#: The user's verbs and the states each is legal in.
OPERATIONS: dict[str, frozenset[State]] = {
    "start": frozenset({S.DEFINED, S.STOPPED, S.CRASHED, S.SAVED}),
    "pause": frozenset({S.RUNNING}),
    "resume": frozenset({S.PAUSED}),
    "shutdown": frozenset({S.RUNNING, S.PAUSED}),
    "stop": frozenset({S.QUEUED, S.STARTING, S.RUNNING, S.PAUSED, S.STOPPING}),
    "reboot": frozenset({S.RUNNING}),
    "destroy": frozenset(set(State) - {S.DESTROYED}),
    "save": frozenset({S.RUNNING, S.PAUSED}),
    "restore": frozenset({S.SAVED}),
}

_ORDER = list(State)


def allowed(current: State, target: State) -> bool:
    """Whether the service may move a VM from ``current`` to ``target``."""
    return target in TRANSITIONS[current]


def check(vm: str, operation: str, current: State) -> None:
    """Refuse ``operation`` unless it is legal in ``current``.

    :raises InvalidState: naming the current and the required states.
    :raises KeyError: for an operation this table does not know (a programming error).
    """
    legal = OPERATIONS[operation]
    if current not in legal:
        required = sorted(legal, key=_ORDER.index)
        raise InvalidState(vm, operation, current.value, [s.value for s in required])


def from_qmp_status(status: str) -> State:
    """Map a QMP ``query-status`` run state onto ours.

    QEMU has about twenty run states; Corral needs only to know whether the guest runs, is held,
    or is gone.
    """
    if status == "running":
        return S.RUNNING
    if status in ("internal-error", "io-error", "guest-panicked", "watchdog"):
        return S.CRASHED
    if status == "shutdown":
        return S.STOPPED
    if status in ("inmigrate", "restore-vm"):
        return S.RESTORING
    if status in ("finish-migrate", "postmigrate", "save-vm"):
        return S.SAVING
    # paused, prelaunch, suspended, debug, colo ...: held, not running
    return S.PAUSED
