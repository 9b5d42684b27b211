"""Figures about every VM, gathered in the background, and durations read from the events.

A scrape of ``/metrics`` or a chart on the web page never waits for a guest or a monitor:
both read :attr:`Telemetry.figures`, which one background task refreshes every
``metrics.interval`` seconds. For each VM with a machine it reads the process's CPU time and
resident memory from ``/proc``, its disks' counters from the engine (``block_stats``, bounded
by a short timeout, all VMs at once) and its taps' counters from ``/sys`` (as the guest sees
them: the tap's rx is what the guest sent, like ``corral show``).

Durations come from the event stream (:mod:`corral.service.events`): how long a request
waited in the queue (``queued`` to its start), a cold boot (the ``ready`` event's
``boot_seconds``, as ``corral show`` reports it) and a warm start (``starting`` to ``ready``
of a VM started from a snapshot).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

from corral import settings
from corral.errors import CorralError
from corral.host import procstat
from corral.service.events import Event, EventHub
from corral.service.runtime import VMRuntime

log = logging.getLogger(__name__)
STATS_TIMEOUT = 1.0  # the longest a monitor may take to give its disks' counters
HISTORY = 150  # figures kept per VM for the page's charts (5 minutes at 2 s)
START_KINDS = frozenset({"started", "warm_started", "restored"})


class Durations:
    """Observed durations, in seconds, by what they measure (fed to histograms)."""

    def __init__(self) -> None:
        self.sinks: dict[str, list[Any]] = {"queue_wait": [], "boot": [], "warm_start": []}

    def observe(self, what: str, seconds: float) -> None:
        for sink in self.sinks[what]:
            sink(seconds)


class Telemetry:
    """The cache of per-VM figures, and the durations the events tell."""

    def __init__(self, rt: VMRuntime, hub: EventHub) -> None:
        self.rt = rt
        self.figures: dict[str, dict[str, Any]] = {}
        self.history: dict[str, deque[dict[str, Any]]] = {}
        self.durations = Durations()
        self.gathered_at = 0.0
        self.gather_seconds = 0.0
        self._queued: dict[str, float] = {}
        self._starting: dict[str, tuple[float, str]] = {}
        self._task: asyncio.Task[None] | None = None
        hub.observers.append(self.observe)

    # ----- durations from events ------------------------------------------------------------
    def observe(self, ev: Event) -> None:
        vm, kind, ts = ev["vm"], ev["kind"], ev["ts"]
        if kind == "queued":
            self._queued[vm] = ts
        elif kind in START_KINDS and vm in self._queued:
            self.durations.observe("queue_wait", ts - self._queued.pop(vm))
        elif kind in ("dequeued", "destroyed"):
            self._queued.pop(vm, None)
        if kind == "starting":
            self._starting[vm] = (ts, "")
        elif kind in START_KINDS and vm in self._starting:
            self._starting[vm] = (self._starting[vm][0], kind)
        elif kind == "ready":
            began, how = self._starting.pop(vm, (None, ""))
            boot = ev["detail"].get("boot_seconds")
            if how == "started" and isinstance(boot, int | float):
                self.durations.observe("boot", float(boot))
            elif how == "warm_started" and began is not None:
                self.durations.observe("warm_start", ts - began)
        elif kind == "destroyed":
            self._starting.pop(vm, None)
            self.figures.pop(vm, None)
            self.history.pop(vm, None)

    # ----- figures, in the background --------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="telemetry")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                await self.gather()
            except Exception:  # a figure is not worth the daemon: log it and go on
                log.exception("gathering VM figures failed")
            await asyncio.sleep(settings.value("metrics.interval"))

    async def gather(self) -> None:
        """Refresh the figures of every VM that has a machine (all at once)."""
        t0 = time.monotonic()
        names = [n for n in self.rt.live if self.rt.db.get_vm(n) is not None]
        fresh = await asyncio.gather(*(self._vm(n) for n in names))
        now = time.time()
        for name, figures in zip(names, fresh, strict=True):
            figures["at"] = now
            self.figures[name] = figures
            self.history.setdefault(name, deque(maxlen=HISTORY)).append(_point(figures))
        for gone in set(self.figures) - set(names):  # stopped: keep its history, not figures
            del self.figures[gone]
        self.gathered_at = now
        self.gather_seconds = time.monotonic() - t0

    async def _vm(self, name: str) -> dict[str, Any]:
        live = self.rt.live.get(name)
        rec = self.rt.db.get_vm(name)
        out: dict[str, Any] = {"cpu_seconds": None, "rss_bytes": None, "disks": {}, "nics": {}}
        if live is None or rec is None:
            return out
        pid = live.machine.pid
        out["cpu_seconds"] = procstat.cpu_seconds(pid)
        out["rss_bytes"] = procstat.rss_bytes(pid)
        with contextlib.suppress(CorralError, OSError, TimeoutError):
            out["disks"] = await asyncio.wait_for(live.machine.block_stats(), STATS_TIMEOUT)
        for i, nic in enumerate(rec.spec.nics):
            if nic.ifname:
                tap = procstat.interface_counters(nic.ifname)
                if tap is not None:  # the tap's rx is what the guest sent
                    out["nics"][nic.device(i)] = {
                        "rx_bytes": tap["tx_bytes"], "tx_bytes": tap["rx_bytes"],
                        "rx_packets": tap["tx_packets"], "tx_packets": tap["rx_packets"]}
        return out

    def vm_stats(self, name: str) -> dict[str, Any]:
        """The VM's latest figures and its recent points (for the page's charts).

        :raises NotFound: no VM of that name.
        """
        rec = self.rt.get(name)
        return {"name": name, "state": rec.state.value, "interval":
                settings.value("metrics.interval"), "figures": self.figures.get(name),
                "points": list(self.history.get(name, ()))}


def _point(f: dict[str, Any]) -> dict[str, Any]:
    """One point of a VM's history: totals over its disks and NICs (None: no device has
    counters, e.g. only user-mode NICs, which have no tap)."""
    disks = f["disks"].values()
    nics = list(f["nics"].values()) or None
    return {"at": round(f["at"], 3), "cpu_seconds": f["cpu_seconds"], "rss_bytes": f["rss_bytes"],
            "rd_bytes": sum(d.get("rd_bytes", 0) for d in disks),
            "wr_bytes": sum(d.get("wr_bytes", 0) for d in disks),
            "rx_bytes": sum(n["rx_bytes"] for n in nics) if nics else None,
            "tx_bytes": sum(n["tx_bytes"] for n in nics) if nics else None}
