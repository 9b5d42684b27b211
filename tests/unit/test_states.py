"""The full state-transition matrix: every operation from every state, every move."""

from __future__ import annotations

import pytest

from corral.domain.states import (
    LIVE,
    OPERATIONS,
    TRANSITIONS,
    State,
    allowed,
    check,
    from_qmp_status,
)
from corral.errors import InvalidState

S = State

# The contract, written out by hand so a change to the table is a visible change here.
EXPECTED_OPS = {
    "start": {S.DEFINED, S.STOPPED, S.CRASHED, S.SAVED},
    "pause": {S.RUNNING},
    "resume": {S.PAUSED},
    "shutdown": {S.RUNNING, S.PAUSED},
    "stop": {S.QUEUED, S.STARTING, S.RUNNING, S.PAUSED, S.STOPPING},
    "reboot": {S.RUNNING},
    "destroy": set(State) - {S.DESTROYED},
    "save": {S.RUNNING, S.PAUSED},
    "restore": {S.SAVED},
}


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("op", sorted(EXPECTED_OPS))
def test_operation_matrix(op: str, state: State) -> None:
    if state in EXPECTED_OPS[op]:
        check("vm1", op, state)
    else:
        with pytest.raises(InvalidState) as info:
            check("vm1", op, state)
        err = info.value
        assert err.state == state.value
        assert set(err.required) == {s.value for s in EXPECTED_OPS[op]}
        assert f"cannot {op} VM 'vm1': it is {state.value}" in err.message
        assert "\n" not in err.message


def test_table_covers_every_operation() -> None:
    assert set(OPERATIONS) == set(EXPECTED_OPS)


@pytest.mark.parametrize("src", list(State))
@pytest.mark.parametrize("dst", list(State))
def test_transition_matrix(src: State, dst: State) -> None:
    assert allowed(src, dst) == (dst in TRANSITIONS[src])
    if src == S.DESTROYED:
        assert not allowed(src, dst)  # destroyed is final
    if src != S.DESTROYED and dst == S.DESTROYED:
        assert allowed(src, dst)  # anything can be destroyed


def test_every_state_is_reachable_from_defined() -> None:
    seen, todo = {S.DEFINED}, [S.DEFINED]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(State)


def test_every_operation_target_is_a_legal_move() -> None:
    # each user operation leads somewhere the transition table allows
    targets = {"start": S.STARTING, "pause": S.PAUSED, "resume": S.RUNNING,
               "shutdown": S.STOPPING, "save": S.SAVING, "restore": S.RESTORING,
               "destroy": S.DESTROYED}
    for op, target in targets.items():
        for state in OPERATIONS[op]:
            # starting a saved VM restores it
            to = S.RESTORING if op == "start" and state == S.SAVED else target
            assert allowed(state, to), (op, state)


def test_live_states_hold_a_process() -> None:
    assert S.RUNNING in LIVE and S.PAUSED in LIVE
    assert not LIVE & {S.DEFINED, S.STOPPED, S.CRASHED, S.SAVED, S.DESTROYED}


@pytest.mark.parametrize(("qmp", "ours"), [
    ("running", S.RUNNING), ("paused", S.PAUSED), ("prelaunch", S.PAUSED),
    ("suspended", S.PAUSED), ("shutdown", S.STOPPED), ("guest-panicked", S.CRASHED),
    ("internal-error", S.CRASHED), ("inmigrate", S.RESTORING), ("postmigrate", S.SAVING),
])
def test_qmp_status_mapping(qmp: str, ours: State) -> None:
    assert from_qmp_status(qmp) == ours
