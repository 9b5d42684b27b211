"""Live migration between fake machines, as QEMU does it: a target launched ``incoming``
listens at a URI; the source's guest (its RAM and devices) moves there and the source is
left ``postmigrate``; a failure leaves the guest running on the source."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from corral.engine.driver import MigrationOptions, MigrationProgress, MigrationResult
from corral.engine.fake.core import MachineCore
from corral.errors import MigrationFailed, MonitorError

#: the targets listening, by URI (one process here stands in for every host)
LISTENERS: dict[str, MachineCore] = {}


class FakeLiveMigration(MachineCore):
    """The live-migration half of :class:`~.machine.FakeMachine`."""

    serving: tuple[str | None, tuple[str, ...]] = (None, ())  # the NBD address and disks

    async def serve_incoming(self, uri: str, nbd: str | None = None,
                             disks: tuple[str, ...] = (), postcopy: bool = False,
                             tls: Path | None = None) -> None:
        await self._qmp("serve_incoming", "migrate-incoming")
        if self.runstate != "inmigrate":
            raise MonitorError("migrate-incoming", "GenericError",
                               "'-incoming' was not specified on the command line")
        missing = set(disks) - set(self.disks)
        if missing:
            raise MonitorError("nbd-server-add", "GenericError",
                               f"Cannot find device={sorted(missing)[0]}")
        self.serving = (nbd, tuple(disks))
        LISTENERS[uri] = self

    async def migrate_to(self, uri: str, options: MigrationOptions,
                         on_progress: Callable[[MigrationProgress], None] | None = None
                         ) -> MigrationResult:
        try:
            await self._qmp("migrate_to", "migrate", options.timeout)
        except MonitorError as err:
            raise MigrationFailed(f"migration of '{self.name}' failed: {err.message}",
                                  "setup") from err
        target = LISTENERS.pop(uri, None)
        if target is None or not target.alive:
            raise MigrationFailed(f"migration of '{self.name}' failed: Connection refused",
                                  "stream")
        if target._devices() != self._devices():
            raise MigrationFailed(f"migration of '{self.name}' failed: the target's devices "
                                  "differ", "stream")
        if set(options.mirror) - set(getattr(target, "serving", (None, ()))[1]):
            raise MigrationFailed(f"a disk copy of '{self.name}' stopped", "disks")
        ram = self.guest.ram()
        total = self.spec.memory_bytes
        if on_progress is not None:
            on_progress(MigrationProgress("active", 0, total, total, passes=1))
        was_running = self.runstate == "running"
        target._load_ram(ram)
        target.runstate = "paused" if was_running else self.runstate
        target._notify()
        self.runstate = "postmigrate"
        self._notify()
        if on_progress is not None:
            on_progress(MigrationProgress("completed", total, 0, total, passes=2))
        return MigrationResult(total_time=0.001, downtime=0.001, transferred=total,
                               postcopy=False)

    async def cancel_migration(self) -> None:
        await self._qmp("cancel_migration", "migrate_cancel", 5)

    async def finish_incoming(self, timeout: float = 600.0) -> None:
        await self._qmp("finish_incoming", "query-status", timeout)
        if self.runstate == "inmigrate":
            raise MigrationFailed(f"'{self.name}': the state did not arrive", "incoming")
        self.serving = (None, ())
        if self.runstate == "paused":
            self._resume()
