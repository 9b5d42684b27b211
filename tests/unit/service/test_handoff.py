"""How a clone takes its clock and hostname at a hand-out (corral.service.handoff), against a
scripted guest agent: the waiting shell is made ready while the clone is made (its FIFO
held, its name gone), fed at the hand-out in one exchange without a command started, with
the agent held, and replaced by one short command when it is gone or was never there."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import cast

import pytest

from corral.engine.driver import ExecStatus, Machine
from corral.errors import AgentError
from corral.service import handoff


@dataclass
class Guest:
    """The agent calls a hand-out makes, and a guest whose shell may make its FIFO."""

    has_agent: bool = True
    makes_fifo_after: int = 1        # opens that fail before the FIFO is there
    unlinks_after: int = 1           # opens that succeed before the shell unlinks it
    shell_exited: bool = False
    ends_when_fed: bool = True       # the shell sets the clock and ends
    calls: list[tuple[str, object]] = field(default_factory=list)
    held: bool = False
    fed: bool = False
    name: str = "clone"

    @contextlib.asynccontextmanager
    async def guest_hold(self) -> AsyncIterator[None]:
        self.held = True
        try:
            yield
        finally:
            self.held = False

    async def guest_exec(self, argv: list[str], stdin: bytes | None = None,
                         env: list[str] | None = None, capture: bool = True,
                         timeout: float = 30.0) -> int:
        self.calls.append(("exec", argv[-1]))
        return 42 if argv[-1] == handoff.WAITER else 43  # 43: a short command

    async def guest_exec_status(self, pid: int) -> ExecStatus:
        self.calls.append(("status", pid))
        exited = pid == 43 or self.shell_exited or (self.fed and self.ends_when_fed)
        return ExecStatus(exited=exited, exitcode=0 if exited else None)

    async def guest_open(self, path: str, mode: str) -> int:
        self.calls.append(("open", path))
        assert mode == "r+"  # never a mode that blocks on a FIFO without a reader
        if self.makes_fifo_after:
            self.makes_fifo_after -= 1
            raise AgentError("No such file or directory")
        if self.unlinks_after:
            self.unlinks_after -= 1
            return 7 + self.unlinks_after
        raise AgentError("No such file or directory")

    async def guest_close(self, handle: int) -> None:
        self.calls.append(("close", handle))

    async def guest_feed(self, pid: int, handle: int, data: bytes, timeout: float = 5.0
                         ) -> bool:
        self.calls.append(("feed", data.decode().split()[1]))
        assert self.held and handle == 8 and pid == 42
        self.fed = True
        return not self.shell_exited


def m(guest: Guest) -> Machine:
    return cast("Machine", guest)


async def test_the_shell_is_made_ready_and_fed_at_the_hand_out() -> None:
    g = Guest(unlinks_after=2)
    waiting = await handoff.prepare(m(g))
    assert waiting == (42, 8)
    assert g.calls[0] == ("exec", handoff.WAITER)
    assert [c for c, _ in g.calls].count("open") == 4  # missing, held, there, gone
    assert ("close", 7) in g.calls and ("close", 8) not in g.calls
    g.calls.clear()
    await handoff.apply(m(g), "job1", waiting)
    # held until the shell ended: a request after it sees the clock and the name
    assert g.calls == [("feed", "job1"), ("status", 42)] and not g.held


async def test_a_shell_gone_or_missing_gives_way_to_one_command() -> None:
    g = Guest(shell_exited=True)
    await handoff.apply(m(g), "job1", (42, 8))
    assert [c for c, _ in g.calls] == ["feed", "exec", "status"]
    assert "job1 >/proc/sys/kernel/hostname" in str(g.calls[-2][1])
    g = Guest()
    await handoff.apply(m(g), "job2", None)
    assert g.calls[0][0] == "exec" and g.calls[1:] == [("status", 43)]
    assert await handoff.prepare(m(Guest(shell_exited=True, makes_fifo_after=9))) is None
    assert await handoff.prepare(m(Guest(has_agent=False))) is None


async def test_a_shell_that_does_not_end_is_waited_for_only_so_long(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(handoff, "APPLIED_WITHIN", 0.05)
    g = Guest(ends_when_fed=False)
    await handoff.apply(m(g), "job3", (42, 8))
    assert g.calls[0] == ("feed", "job3") and {c for c, _ in g.calls[1:]} == {"status"}
    assert not g.held and "were not set within 0.05 s" in caplog.text
