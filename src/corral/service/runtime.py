"""The VM runtime: the one owner of VM records, per-VM locks, state transitions, live machines.

Every use case goes through it: it takes the VM's lock (:meth:`VMRuntime.lock`), reads the
record (:meth:`get`), checks the verb against the table in :mod:`corral.domain.states`, does
its work through the engine driver, and moves the state with :meth:`set_state`, the only
place a state is written (it refuses a move the table does not allow, and puts the record
back when the store write fails, so memory never runs ahead of disk). A failed start,
restore or revert is rolled back by one guard (:meth:`rollback`).

Events and exits come from the engine on the event loop and update the state at once. What
the runtime does not own it calls through :class:`Hooks`: the NICs' taps (plugged before a
machine starts, unplugged when it ends) and the scheduler's reservation (released when a
machine ends), so it imports neither the network nor the scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.config import Paths
from corral.domain.states import LIVE, State, allowed
from corral.engine.driver import (
    GUEST_PANICKED,
    RESET,
    RESUME,
    SHUTDOWN,
    STOP,
    Driver,
    ExitStatus,
    LaunchOptions,
    Machine,
)
from corral.errors import CorralError, InvalidState, NotFound, Timeout
from corral.service import access
from corral.service.hooks import Hooks, NoHooks
from corral.store.db import Store, VMRecord

log = logging.getLogger(__name__)
READY_TIMEOUT = 120.0


OnReady = Callable[[str, Machine], Awaitable[None]]


@dataclass
class Live:
    """What the daemon holds for one VM whose machine exists."""

    machine: Machine
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    ready_task: asyncio.Task[None] | None = None
    expected_exit: str | None = None  # set when Corral (or the guest) asked the machine to end
    exit_state: State = State.STOPPED  # where an expected exit leaves the VM
    reset: asyncio.Event = field(default_factory=asyncio.Event)


class VMRuntime:
    """Records, locks, transitions, live machines and views of every VM."""

    def __init__(self, paths: Paths, store: Store, driver: Driver, accel: str,
                 hooks: Hooks | None = None) -> None:
        self.paths = paths
        self.db = store
        self.driver = driver
        self.accel = accel
        self.hooks: Hooks = hooks or NoHooks()
        self.live: dict[str, Live] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Future[None]] = set()
        self.renamed: dict[str, str] = {}  # launch name → current name (:mod:`.renaming`)

    # ----- records, locks, transitions -----------------------------------------------------
    def lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def busy(self, name: str) -> bool:
        return name in self._locks and self._locks[name].locked()

    def get(self, name: str) -> VMRecord:
        """:raises NotFound: no VM of that name (in a project the caller may see)."""
        rec = self.db.get_vm(name)
        if rec is None or not access.visible(rec.project):
            raise NotFound(f"no VM named '{name}'; see 'corral list'")
        return rec

    def set_state(self, rec: VMRecord, state: State, kind: str | None = None,
                  wait: bool = True, doc: tuple[str, Any] | None = None,
                  **detail: Any) -> None:
        """Move ``rec`` to ``state`` and record an event ``kind`` (the state's name by
        default) in the same write, with the document ``doc`` (key, value) when given.

        :raises InvalidState: the table does not allow the move.
        :raises CorralError: the store write failed; the record is as it was.
        """
        before = rec.state
        if before != state and not allowed(before, state):
            raise InvalidState(rec.name, f"move to {state.value}", before.value,
                               [s.value for s in State if allowed(s, state)])
        rec.state = state
        try:
            if doc is not None:
                self.db.put_doc(doc[0], doc[1], rec, kind or state.value, detail)
            else:
                self.db.update_vm(rec, kind or state.value, detail, wait=wait)
        except BaseException:
            rec.state = before
            raise

    def record(self, rec: VMRecord, kind: str, **detail: Any) -> None:
        """Write ``rec`` (no state change) with an event."""
        self.db.update_vm(rec, kind, detail)

    @contextlib.asynccontextmanager
    async def rollback(self, rec: VMRecord, before: State, kind: str = "start_failed"
                       ) -> AsyncIterator[None]:
        """Undo a start, restore or revert that fails inside the block: end the machine it
        made, remove its run files, free its reservation, and put the VM back in ``before``
        with the error recorded. The error is raised again."""
        try:
            yield
        except BaseException as err:
            live = self.live.pop(rec.name, None)
            if live is not None:
                if live.machine.alive:
                    await self.kill(live)
                await self._close(live)
                self.hooks.unplug(rec.name)
            self.driver.cleanup(self.paths.run_dir(rec.name))
            self.hooks.released(rec.name)
            rec = self.db.get_vm(rec.name) or rec
            rec.pid = rec.pid_start = None
            rec.exit_reason = f"{kind.replace('_', ' ')}: {err}"
            with contextlib.suppress(CorralError):
                self.set_state(rec, before, kind, error=str(err))
            raise

    # ----- live machines ---------------------------------------------------------------------
    def machine(self, rec: VMRecord) -> Live:
        """The live handle of a VM that should have a machine.

        :raises CorralError: the daemon holds none (the VM's state says otherwise).
        """
        live = self.live.get(rec.name)
        if live is None:
            raise CorralError(f"VM '{rec.name}' is {rec.state.value} but the daemon holds no "
                              "process for it")
        return live

    async def spawn(self, rec: VMRecord, options: LaunchOptions | None = None) -> Live:
        """Start a machine for ``rec`` and watch its events and exit. On failure nothing it
        made is left (its taps included)."""
        await self.hooks.plug(rec)
        try:
            machine = await self.driver.launch(
                rec.spec, self.paths.run_dir(rec.name), self.paths.vm_dir(rec.name) /
                "serial.log", self.event_handler(rec.name), options)
        except BaseException:
            self.hooks.unplug(rec.name)
            raise
        live = self.attach(rec, machine)
        rec.accel, rec.spec.launched_as = self.accel, None
        return live

    def event_handler(self, name: str) -> Callable[[str, dict[str, Any]], None]:
        """The callback through which a machine of VM ``name`` reports its events."""
        return lambda event, data: self._on_event(self.renamed.get(name, name), event, data)

    def attach(self, rec: VMRecord, machine: Machine) -> Live:
        """Hold ``machine`` as the VM's live machine and watch its exit."""
        live = Live(machine)
        self.live[rec.name] = live
        machine.watch_exit(lambda status: self._on_exit(rec.name, live, status))
        rec.pid, rec.pid_start = machine.pid, machine.started
        return live

    async def kill(self, live: Live) -> None:
        """End a machine: ``quit`` (flushes its disks), then SIGKILL if it lingers."""
        with contextlib.suppress(CorralError):
            await live.machine.quit(timeout=2)
        if not await live.machine.wait_exit(2):
            live.machine.kill()
            await live.machine.wait_exit(5)

    def background(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task = access.detached(coro)  # as the daemon, not as the request that set it going
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _close(self, live: Live) -> None:
        if live.ready_task:
            live.ready_task.cancel()
        await live.machine.close()

    async def close(self) -> None:
        """Let go of every machine without stopping it: VMs outlive the daemon."""
        for live in list(self.live.values()):
            live.machine.unwatch()
            await self._close(live)
        self.live.clear()
        for task in list(self._tasks):
            task.cancel()

    # ----- readiness -----------------------------------------------------------------------
    def watch_ready(self, name: str, live: Live, fresh: bool = False,
                    on_ready: OnReady | None = None, then: OnReady | None = None) -> None:
        """Watch in the background until the guest agent answers, then mark the VM ready
        (``on_ready`` runs before, ``then`` after). ``fresh``: the guest rebooted, so the old
        agent channel is dropped first."""
        if not live.machine.has_agent:
            return
        machine = live.machine

        async def watch() -> None:
            if fresh:
                await machine.guest_reset_channel()
            try:
                await machine.guest_wait_ready(READY_TIMEOUT)
            except Timeout:
                log.warning("guest agent of %s did not answer in %s s", name, READY_TIMEOUT)
                return
            if on_ready is not None:
                await on_ready(name, machine)
            rec = self.db.get_vm(name)
            if rec is not None and self.live.get(name) is live:
                rec.ready_at = time.time()
                self.record(rec, "ready", boot_seconds=rec.boot_seconds())
                live.ready.set()
                if then is not None:
                    self.background(then(name, machine))

        live.ready.clear()
        if live.ready_task:
            live.ready_task.cancel()
        live.ready_task = access.detached(watch(), f"ready-{name}")

    def not_ready(self, name: str, why: str) -> None:
        """The guest agent stopped answering: the VM is not ready until it answers again."""
        live = self.live.get(name)
        rec = self.db.get_vm(name)
        if live is None or rec is None or not live.ready.is_set():
            return
        rec.ready_at = None
        self.record(rec, "not_ready", reason=why)
        self.watch_ready(name, live, fresh=True)

    async def wait_admitted(self, name: str, timeout: float) -> None:
        """Wait while the VM is queued (or starting).

        :raises Timeout: when it is still queued after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while (rec := self.get(name)).state in (State.QUEUED, State.STARTING):
            if time.monotonic() > deadline:
                raise Timeout(f"VM '{name}' is still {rec.state.value} after {timeout:g} s; "
                              "see 'corral queue'")
            await asyncio.sleep(0.05)

    async def wait_ready(self, name: str, timeout: float = READY_TIMEOUT) -> None:
        """Wait until the guest agent of a running VM answers (a queued VM is waited for
        through the queue first).

        :raises Timeout: when it has not answered after ``timeout`` seconds.
        :raises InvalidState: when the VM is not running or has no guest agent.
        """
        t0 = time.monotonic()
        if self.get(name).state in (State.QUEUED, State.STARTING):
            await self.wait_admitted(name, timeout)
            timeout = max(0.1, timeout - (time.monotonic() - t0))
        live = self.live.get(name)
        rec = self.get(name)
        if live is None or not live.machine.has_agent:
            raise InvalidState(name, "wait for", rec.state.value, ["running with an agent"])
        exited = asyncio.ensure_future(live.machine.wait_exit())
        ready = asyncio.ensure_future(live.ready.wait())
        try:
            done, _ = await asyncio.wait({exited, ready}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
            ready.cancel()
        if ready not in done:
            rec = self.get(name)
            if exited in done:
                raise InvalidState(name, "wait for", rec.state.value, ["running"])
            raise Timeout(f"VM '{name}' is running but its guest agent did not answer in "
                          f"{timeout:g} s; see 'corral logs {name}'")

    # ----- events from the engine ----------------------------------------------------------
    def _on_event(self, name: str, event: str, data: dict[str, Any]) -> None:
        live = self.live.get(name)
        rec = self.db.get_vm(name)
        if live is None or rec is None:
            return
        busy = self.busy(name)  # a Corral operation sets the state it causes itself
        if event == STOP and rec.state == State.RUNNING and not busy:
            self.set_state(rec, State.PAUSED, "paused", by="qemu")
        elif event == RESUME and rec.state == State.PAUSED and not busy:
            self.set_state(rec, State.RUNNING, "resumed", by="qemu")
        elif event == SHUTDOWN:
            reason = str(data.get("reason", ""))
            if live.expected_exit is None:
                live.expected_exit = ("guest powered off" if data.get("guest")
                                      else f"QEMU shut down ({reason})")
            if reason == "guest-panic":
                live.expected_exit = None
            if rec.state in (State.RUNNING, State.PAUSED):
                self.set_state(rec, State.STOPPING, "shutdown", reason=reason)
        elif event == RESET:
            self.on_reset(name, live)
        elif event == GUEST_PANICKED:
            live.expected_exit = None
            rec.exit_reason = "guest kernel panicked"
            live.machine.kill()

    def on_reset(self, name: str, live: Live) -> None:
        rec = self.db.get_vm(name)
        if rec is None:
            return
        live.reset.set()
        rec.ready_at = None
        rec.started_at = time.time()
        self.record(rec, "reset")
        self.watch_ready(name, live, fresh=True)

    def _on_exit(self, name: str, live: Live, status: ExitStatus) -> None:
        if self.live.get(name) is not live:
            return
        del self.live[name]
        if live.ready_task:
            live.ready_task.cancel()
        self.hooks.released(name)
        self.background(live.machine.close())
        self.driver.cleanup(self.paths.run_dir(name))
        self.hooks.unplug(name)
        rec = self.db.get_vm(name)
        if rec is None:
            return
        rec.pid = rec.pid_start = None
        rec.ready_at = None
        if live.expected_exit is not None:
            rec.exit_reason = live.expected_exit
            self.set_state(rec, live.exit_state, live.exit_state.value,
                           reason=live.expected_exit)
        else:
            rec.exit_reason = rec.exit_reason or f"QEMU {status.describe()}"
            self.set_state(rec, State.CRASHED, "crashed", reason=rec.exit_reason)

    # ----- views ---------------------------------------------------------------------------
    def view(self, rec: VMRecord) -> dict[str, Any]:
        """What a front door shows of a VM (see :func:`corral.service.vmview.vm_view`)."""
        from corral.service.vmview import vm_view

        return vm_view(rec, rec.state in LIVE and rec.name in self.live, self.paths, self.driver)

    def forget(self, name: str) -> None:
        """The VM is gone: drop its lock."""
        self._locks.pop(name, None)

    def run_dir(self, name: str) -> Path:
        return self.paths.run_dir(name)
