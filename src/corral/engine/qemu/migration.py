"""Live migration between two QEMU processes, over TCP (the QMP side of ``corral migrate``).

The target is a QEMU launched ``-incoming defer -S`` with the same devices. It listens with
``migrate-incoming``; for disks that are not on shared storage it also serves its (empty,
same-sized) disks writable over NBD, and the source copies them live with a
``blockdev-mirror`` job per disk before and while RAM moves. With mirrors, the source pauses
before the switch (``pause-before-switchover``) so that the jobs are brought to a consistent
end while the guest stands still; then the stream completes, the target stops serving its
disks and runs the guest. Pre-copy converges with ``auto-converge`` (QEMU throttles vCPUs
that dirty memory faster than the link) under a ``downtime-limit``; post-copy, when asked,
starts after the first full pass over RAM. Every failure leaves the guest running on the
source with its mirrors and NBD clients removed; the caller kills the target.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corral.engine.driver import MigrationOptions, MigrationProgress, MigrationResult
from corral.engine.qemu.confine import Confinement
from corral.engine.qemu.qmp import Monitor
from corral.errors import CorralError, MigrationFailed, MonitorError

TLS_ID = "crl-migrate-tls"
POLL = 0.01    # seconds between readings of a running migration
REPORT = 0.1   # seconds between progress reports (and at every change of status)
ENDED = ("completed", "failed", "cancelled")


def _host_port(address: str) -> dict[str, str]:
    host, _, port = address.rpartition(":")
    return {"type": "inet", "host": host.strip("[]"), "port": port}


def progress_of(info: dict[str, Any], jobs: list[dict[str, Any]]) -> MigrationProgress:
    """A reading of ``query-migrate`` (and the mirror jobs), in Corral's terms."""
    ram = info.get("ram") or {}
    page = int(ram.get("page-size") or 4096)
    return MigrationProgress(
        status=str(info.get("status", "none")),
        transferred=int(ram.get("transferred", 0)),
        remaining=int(ram.get("remaining", 0)),
        total=int(ram.get("total", 0)),
        dirty_rate=int(ram.get("dirty-pages-rate", 0)) * page,
        expected_downtime=int(info.get("expected-downtime", 0)) / 1000,
        passes=int(ram.get("dirty-sync-count", 0)),
        disk_done=sum(int(j.get("offset", 0)) for j in jobs),
        disk_total=sum(int(j.get("len", 0)) for j in jobs),
        postcopy=str(info.get("status", "")).startswith("postcopy"))


class LiveMigration:
    """The live-migration half of :class:`~.driver.QemuMachine`."""

    name: str
    monitor: Monitor
    confinement: Confinement

    async def _tls(self, directory: Path | None, endpoint: str) -> dict[str, Any]:
        if directory is None:
            return {}
        # QEMU opens them as its own user: hand them over
        self.confinement.hand_over([directory / f for f in (
            "ca-cert.pem", f"{endpoint}-cert.pem", f"{endpoint}-key.pem")])
        with contextlib.suppress(MonitorError):  # from an earlier attempt
            await self.monitor.execute("object-del", {"id": TLS_ID})
        await self.monitor.execute("object-add", {
            "qom-type": "tls-creds-x509", "id": TLS_ID, "dir": str(directory),
            "endpoint": endpoint, "verify-peer": True})
        return {"tls-creds": TLS_ID}

    async def _capabilities(self, **caps: bool) -> None:
        await self.monitor.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": name.replace("_", "-"), "state": on} for name, on in caps.items()]})

    # -- the target ----------------------------------------------------------------------------
    async def serve_incoming(self, uri: str, nbd: str | None = None,
                             disks: tuple[str, ...] = (), postcopy: bool = False,
                             tls: Path | None = None) -> None:
        params = await self._tls(tls, "server")
        if params:
            await self.monitor.execute("migrate-set-parameters", params)
        await self._capabilities(postcopy_ram=postcopy)
        if nbd is not None and disks:
            host_port = {k: v for k, v in _host_port(nbd).items() if k != "type"}
            # nbd-server-start still takes the legacy address shape ({"type", "data"})
            await self.monitor.execute("nbd-server-start", {"addr": {
                "type": "inet", "data": host_port}, **(
                {"tls-creds": TLS_ID} if tls else {})})
            for node in disks:
                await self.monitor.execute("nbd-server-add", {"device": node, "writable": True})
        await self.monitor.execute("migrate-incoming", {"uri": uri})

    async def finish_incoming(self, timeout: float = 600.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            status = str((await self.monitor.execute("query-status"))["status"])
            if status not in ("inmigrate", "postmigrate", "prelaunch"):
                break
            info = await self.monitor.execute("query-migrate")
            if info.get("status") == "failed":
                raise MigrationFailed(f"'{self.name}': the state did not arrive: "
                                      f"{info.get('error-desc', 'the stream ended')}", "incoming")
            if loop.time() > deadline:
                raise MigrationFailed(f"'{self.name}': no complete state after {timeout:g} s",
                                      "incoming")
            await asyncio.sleep(POLL / 5)
        with contextlib.suppress(MonitorError):  # none was started without local disks
            await self.monitor.execute("nbd-server-stop")
        if status == "paused":
            await self.monitor.execute("cont")
        elif status != "running":
            raise MigrationFailed(f"'{self.name}' is {status} after the migration", "incoming")

    # -- the source ----------------------------------------------------------------------------
    async def _jobs(self) -> list[dict[str, Any]]:
        jobs: list[dict[str, Any]] = await self.monitor.execute("query-block-jobs")
        return [j for j in jobs if str(j.get("device", "")).startswith("crl-mirror-")]

    async def _start_mirrors(self, options: MigrationOptions) -> None:
        if not options.mirror:
            return
        if options.nbd is None:
            raise MigrationFailed("local disks need the target's NBD address", "setup")
        for node in options.mirror:
            server = _host_port(options.nbd)
            await self.monitor.execute("blockdev-add", {
                "driver": "nbd", "node-name": f"crl-nbd-{node}", "server": server,
                "export": node, **({"tls-creds": TLS_ID} if options.tls else {})})
            await self.monitor.execute("blockdev-mirror", {
                "job-id": f"crl-mirror-{node}", "device": node, "target": f"crl-nbd-{node}",
                "sync": "full", "auto-finalize": True, "auto-dismiss": True})

    async def _wait_mirrors_ready(self, options: MigrationOptions, deadline: float,
                                  report: Callable[[MigrationProgress], None] | None) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._jobs()
            if len(jobs) < len(options.mirror):
                raise MigrationFailed(f"a disk copy of '{self.name}' stopped (is the target's "
                                      "disk server reachable?)", "disks")
            if all(j.get("ready") for j in jobs):
                return
            if report is not None:
                report(progress_of({"status": "copying disks"}, jobs))
            if loop.time() > deadline:
                raise MigrationFailed(f"the disks of '{self.name}' were not copied in "
                                      f"{options.timeout:g} s", "disks")
            await asyncio.sleep(POLL)

    async def _end_mirrors(self, force: bool) -> None:
        """Bring the mirror jobs to an end (consistent when not ``force``) and drop the NBD
        clients; waits until QEMU has let go of them."""
        for job in await self._jobs():
            with contextlib.suppress(MonitorError):
                await self.monitor.execute("block-job-cancel",
                                           {"device": job["device"], "force": force})
        for _ in range(600):
            if not await self._jobs():
                break
            await asyncio.sleep(0.01)
        else:
            raise MigrationFailed(f"the disk copies of '{self.name}' did not end", "disks")

    async def _drop_nbd_nodes(self, nodes: tuple[str, ...]) -> None:
        for node in nodes:
            with contextlib.suppress(MonitorError):
                await self.monitor.execute("blockdev-del", {"node-name": f"crl-nbd-{node}"})

    async def migrate_to(self, uri: str, options: MigrationOptions,
                         on_progress: Callable[[MigrationProgress], None] | None = None
                         ) -> MigrationResult:
        if options.postcopy and options.mirror:
            raise MigrationFailed("post-copy cannot be combined with copying local disks: "
                                  "use shared storage or drop --postcopy", "setup")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + options.timeout
        started = time.monotonic()
        was_running = (await self.monitor.execute("query-status"))["status"] == "running"
        try:
            params: dict[str, Any] = await self._tls(options.tls, "client")
            params["downtime-limit"] = max(1, int(options.max_downtime * 1000))
            params["max-bandwidth"] = options.bandwidth or (1 << 40)
            await self.monitor.execute("migrate-set-parameters", params)
            await self._clear(options)
            await self._capabilities(auto_converge=options.auto_converge,
                                     postcopy_ram=options.postcopy,
                                     pause_before_switchover=bool(options.mirror))
            await self._start_mirrors(options)
            await self._wait_mirrors_ready(options, deadline, on_progress)
            await self.monitor.execute("migrate", {"uri": uri})
            info = await self._follow(options, deadline, on_progress)
        except BaseException as err:
            await self._undo(options, was_running)
            if isinstance(err, MigrationFailed):
                raise
            if isinstance(err, CorralError):
                raise MigrationFailed(f"migration of '{self.name}' failed: {err.message}",
                                      "setup") from err
            raise
        ram = info.get("ram") or {}
        return MigrationResult(
            total_time=time.monotonic() - started, downtime=int(info.get("downtime", 0)) / 1000,
            transferred=int(ram.get("transferred", 0)),
            postcopy=bool(options.postcopy and info.get("postcopy-started")))

    async def _follow(self, options: MigrationOptions, deadline: float,
                      report: Callable[[MigrationProgress], None] | None) -> dict[str, Any]:
        """Watch the stream to its end: start post-copy when asked, finish the mirrors at
        the switch, give up when it cannot converge in time."""
        loop = asyncio.get_running_loop()
        postcopy_started = False
        reported, last = "", 0.0
        while True:
            info: dict[str, Any] = await self.monitor.execute("query-migrate")
            status = str(info.get("status"))
            if report is not None and (status != reported or loop.time() - last >= REPORT):
                report(progress_of(info, await self._jobs() if options.mirror else []))
                reported, last = status, loop.time()
            if status == "completed":
                return {**info, "postcopy-started": postcopy_started}
            if status in ("failed", "cancelled"):
                raise MigrationFailed(f"migration of '{self.name}' {status}: "
                                      f"{info.get('error-desc', 'the stream broke')}", "stream")
            if status == "pre-switchover":
                await self._end_mirrors(force=False)
                await self.monitor.execute("migrate-continue", {"state": "pre-switchover"})
            elif (options.postcopy and not postcopy_started and status == "active"
                  and int((info.get("ram") or {}).get("dirty-sync-count", 0)) >= 2):
                await self.monitor.execute("migrate-start-postcopy")
                postcopy_started = True
            if loop.time() > deadline and not status.startswith("postcopy"):
                ram = info.get("ram") or {}
                raise MigrationFailed(
                    f"migration of '{self.name}' did not converge in {options.timeout:g} s "
                    f"(dirty rate {int(ram.get('dirty-pages-rate', 0)) * 4096 >> 20} MiB/s, "
                    f"expected downtime {info.get('expected-downtime', '?')} ms); raise "
                    "--max-downtime or use --postcopy", "converge")
            await asyncio.sleep(POLL)

    async def _clear(self, options: MigrationOptions) -> None:
        """Disk copies left by an attempt nobody saw to its end (its daemon was killed)."""
        if await self._jobs():
            with contextlib.suppress(CorralError):
                await self._yank(options.mirror)
                await self._end_mirrors(force=True)
        await self._drop_nbd_nodes(options.mirror)

    async def _yank(self, nodes: tuple[str, ...]) -> None:
        """Close the NBD clients' sockets at once (a cut link leaves requests hanging)."""
        if nodes:
            await self.monitor.execute("yank", {"instances": [
                {"type": "block-node", "node-name": f"crl-nbd-{node}"} for node in nodes]})

    async def _undo(self, options: MigrationOptions, was_running: bool) -> None:
        """After a failure: stop the stream and the mirrors; the guest runs on here."""
        with contextlib.suppress(CorralError):
            info = await self.monitor.execute("query-migrate")
            if info.get("status") not in (None, *ENDED):
                await self.monitor.execute("migrate_cancel")
                for _ in range(500):
                    info = await self.monitor.execute("query-migrate")
                    if info.get("status") in ENDED:
                        break
                    await asyncio.sleep(0.01)
        with contextlib.suppress(CorralError):
            await self._yank(options.mirror)
        with contextlib.suppress(CorralError):
            await self._end_mirrors(force=True)
        await self._drop_nbd_nodes(options.mirror)
        with contextlib.suppress(CorralError):
            if was_running and (await self.monitor.execute("query-status"))["status"] != "running":
                await self.monitor.execute("cont")  # stopped for a switch that did not happen

    async def cancel_migration(self) -> None:
        with contextlib.suppress(MonitorError):
            await self.monitor.execute("migrate_cancel")
