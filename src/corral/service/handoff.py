"""How a pool's clone takes the host's clock and its new hostname at a hand-out without
starting a process then.

A clone slept in the pool, so at a hand-out it needs the host's clock, and the hostname
asked for. Done then by a command (``guest-exec``), the guest agent forks, and under TCG on
a busy host that fork costs 25-50 ms that every later request to the agent waits behind.
So the clone starts the process while it is made (:func:`prepare`): a shell blocked reading
a FIFO that the agent holds open read-write (opening a FIFO read-write never blocks, and a
write of a few bytes into it neither, so the agent can never hang on it). The FIFO's name is
unlinked as soon as both ends are open: nothing is left in the guest. At the hand-out
(:func:`apply`) the agent checks the shell still waits, writes the time and the name into
the FIFO and closes it, three requests sent at once and none of them a fork; the shell
writes the hostname and becomes ``date``. The agent is held until that process ended
(:func:`_ended`): the first request of the VM's user (a batch command sent at once, say)
sees the host's clock and the new name, not the ones it slept with in the pool (a clone that
waited an hour was an hour behind).

A clone without a waiting shell (a guest without ``mkfifo``, a clone of an older daemon, a
shell that died) gets one short command instead (:func:`identity_exec`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from corral.errors import AgentError, CorralError, Timeout

if TYPE_CHECKING:
    from corral.engine.driver import Machine

FIFO = "/tmp/.corral-identity-"  # + the shell's pid
# a line "SECONDS NAME" sets the clock and the hostname; a line without a name, or the
# FIFO closed, ends the shell having done nothing
WAITER = (f'f={FIFO}$$; mkfifo -m 600 "$f" || exit 1; exec 3<"$f"; '
          'rm -f "$f"; read -r t n <&3 || exit 0; [ -n "$n" ] || exit 0; '
          'echo "$n" >/proc/sys/kernel/hostname; exec date -s "@$t" >/dev/null')
log = logging.getLogger(__name__)
PREPARE_WITHIN = 5.0
APPLIED_WITHIN = 2.0  # seconds the hand-out waits for the clock and the name to be set
ERRORS = (AgentError, Timeout, CorralError)


def seconds_now() -> int:
    """The host's time for the guest's ``date -s @SECONDS``, which takes no fraction:
    rounded, so the guest starts at most half a second off (truncated, up to a whole second
    behind, and then behind again by the time the command takes to run)."""
    return round(time.time())


async def identity_exec(machine: Machine, name: str) -> None:
    """The host's clock and the hostname ``name`` in one short command (best effort: the
    VM runs either way): the shell writes the hostname itself and becomes ``date``, so the
    guest forks once."""
    if not machine.has_agent:
        return
    script = f"echo {name} >/proc/sys/kernel/hostname; exec date -s @{seconds_now()}"
    with contextlib.suppress(*ERRORS):
        await _ended(machine, await machine.guest_exec(["sh", "-c", script + " >/dev/null"],
                                                       capture=False, timeout=5))


async def _ended(machine: Machine, pid: int) -> None:
    """Wait until the guest's process ``pid`` ended (it set the clock: every request after
    this sees it), for at most :data:`APPLIED_WITHIN` (then logged)."""
    deadline = time.monotonic() + APPLIED_WITHIN
    while not (await machine.guest_exec_status(pid)).exited:
        if time.monotonic() > deadline:
            log.warning("%s: the clock and hostname were not set within %g s",
                        machine.name, APPLIED_WITHIN)
            return
        await asyncio.sleep(0.005)  # the guest's one vCPU runs the agent and the shell


async def prepare(machine: Machine) -> tuple[int, int] | None:
    """Start the shell that will take the clone's identity at its hand-out: its pid and the
    agent's handle on its FIFO, or None (the hand-out then runs :func:`identity_exec`).
    Returns once the shell waits on its read, with no name left in the guest's /tmp."""
    if not machine.has_agent:
        return None
    deadline = time.monotonic() + PREPARE_WITHIN
    handle = None
    try:
        pid = await machine.guest_exec(["sh", "-c", WAITER], capture=False, timeout=5)
        path = f"{FIFO}{pid}"
        while handle is None:  # the shell makes the FIFO
            handle = await _open(machine, path)
            if handle is None:
                await _still_there(machine, pid, deadline)
        while (other := await _open(machine, path)) is not None:  # the shell unlinks it
            await machine.guest_close(other)
            await _still_there(machine, pid, deadline)
        return pid, handle
    except ERRORS:
        if handle is not None:  # the shell, if it still runs, ends on the closed FIFO
            with contextlib.suppress(*ERRORS):
                await machine.guest_close(handle)
        return None


async def _open(machine: Machine, path: str) -> int | None:
    try:
        return await machine.guest_open(path, "r+")
    except AgentError:  # not (or no longer) there
        return None


async def _still_there(machine: Machine, pid: int, deadline: float) -> None:
    """:raises Timeout: the shell ended, or it is too slow."""
    if (await machine.guest_exec_status(pid)).exited or time.monotonic() > deadline:
        raise Timeout("the clone's identity shell did not get ready")
    await asyncio.sleep(0.01)


async def apply(machine: Machine, name: str, waiting: tuple[int, int] | None) -> None:
    """Give a clone just handed out the host's clock and the hostname ``name`` (best
    effort), through the shell :func:`prepare` left waiting if it still does."""
    if not machine.has_agent:
        return
    with contextlib.suppress(*ERRORS):
        async with machine.guest_hold():  # before any request that comes meanwhile
            if waiting is not None and await _handed(machine, name, *waiting):
                return
            await identity_exec(machine, name)


async def _handed(machine: Machine, name: str, pid: int, handle: int) -> bool:
    """Whether the waiting shell got the clock and the name (the line is written and the
    FIFO closed, which flushes it, whether the shell still runs or not: with no reader
    left the line goes nowhere)."""
    try:
        if not await machine.guest_feed(pid, handle, f"{seconds_now()} {name}\n".encode()):
            return False
        await _ended(machine, pid)
        return True
    except ERRORS:
        return False
