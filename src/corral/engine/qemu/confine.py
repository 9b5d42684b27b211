"""How the QEMU driver confines every QEMU it starts, and what a running QEMU's confinement
really is.

:class:`Confinement` is decided once when the daemon opens (by
:mod:`corral.service.confinement`, which says at start which parts are off on this host and
why) and applied at each launch: the files the VM uses are handed over to the QEMU user,
its memory and pids cgroups are made with their limits, and a :class:`~.spawn.Jail` says how
the process starts. :func:`facts` reads back from ``/proc`` what holds for one process, so
``corral show`` reports the kernel's view, not the daemon's intentions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.domain.specs import VMSpec
from corral.engine.driver import RamFile
from corral.engine.qemu.spawn import Jail
from corral.errors import CorralError
from corral.host import cgroups, qemu_user
from corral.host.network.nft import Nft, qemu_table
from corral.host.qemu_user import QemuUser

log = logging.getLogger(__name__)

#: the home's directories a QEMU sees (through its private view); the store, the socket and
#: the run directory are not among them
VISIBLE = ("vms", "disks", "images")
_SECCOMP = {"0": "off", "1": "strict", "2": "filter"}


@dataclass
class Confinement:
    """What confines each QEMU: its user, its seccomp filter, its private view of the home
    and its cgroup limits. ``off`` names each part that is not in force and why."""

    user: QemuUser | None = None
    sandbox: bool = False
    home: Path | None = None        # hide the home behind a private view (mount namespace)
    shared: tuple[Path, ...] = ()   # image directories inside the home, readable by the group
    owned: tuple[Path, ...] = ()    # directories outside the home QEMU's files live in
    tag: str | None = None          # cgroup limits are set (the daemon's tag names groups)
    memory_overhead: int = 0        # bytes over guest RAM before the memory cgroup says no
    pids_max: int = 0
    host_guard: str | None = None   # the nftables table that keeps QEMU off the host's ports
    guard_linger: float = 0.0       # seconds it stays after the last QEMU ends
    off: dict[str, str] = field(default_factory=dict)
    guard_up: bool = False
    _raising: asyncio.Future[None] | None = field(default=None, repr=False, compare=False)
    _lowering: asyncio.TimerHandle | None = field(default=None, repr=False, compare=False)

    def raise_guard(self) -> None:
        """Put the host guard in place (before a QEMU starts, or when QEMUs are adopted). A
        host that refuses it is told in the log and in ``off``; the VM starts anyway."""
        if self.host_guard is None or self.user is None or self.guard_up:
            return
        try:
            Nft().apply(qemu_table(self.host_guard, self.user.uid))
        except CorralError as err:
            self.off["host_guard"] = f"nftables refused the rule: {err.message}"
            log.warning("QEMU confinement: no host guard: %s", self.off["host_guard"])
            self.host_guard = None
            return
        self.guard_up = True

    async def guard(self) -> None:
        """:meth:`raise_guard` off the event loop (``nft`` takes tens of milliseconds, more
        on a busy host): the QEMUs adopted at once wait together for one run of it while
        the loop goes on taking up the others."""
        if self.host_guard is None or self.user is None or self.guard_up:
            return
        if self._raising is None or self._raising.done():
            self._raising = asyncio.ensure_future(asyncio.to_thread(self.raise_guard))
        await asyncio.shield(self._raising)

    def lower_guard(self) -> None:
        """No QEMU of this daemon runs any more: the guard goes (also one a daemon killed
        earlier left)."""
        if self.host_guard is not None:
            with contextlib.suppress(CorralError):
                Nft().delete_table("inet", self.host_guard)
            self.guard_up = False

    def settle(self, idle: Callable[[], bool], at_once: bool = False) -> None:
        """Once ``idle()`` (no QEMU of ours runs or starts), lower the guard: ``guard_linger``
        seconds later unless one starts meanwhile (a script that starts and destroys one VM
        after another would otherwise pay two runs of ``nft``, tens of milliseconds on the
        event loop, for each); ``at_once`` (the daemon closes), off the event loop, or for a
        guard this daemon did not raise (one a daemon killed earlier left): now."""
        if self._lowering is not None:
            self._lowering.cancel()
            self._lowering = None
        if not idle():
            return
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if at_once or loop is None or self.guard_linger <= 0 or not self.guard_up:
            self.lower_guard()
        else:  # (on the loop when it fires: a launch never races a lowering)
            self._lowering = loop.call_later(self.guard_linger, self.settle, idle, True)

    def hand_over(self, paths: Iterable[str | Path]) -> None:
        """Give the QEMU user files it will open by path (a hot-plugged disk).

        :raises CorralError: when they cannot be handed over.
        """
        if self.user is not None and self.home is not None:
            qemu_user.hand_over(paths, self.home, self.user, self.shared, self.owned)

    def jail(self, spec: VMSpec, serial_log: Path, ram: RamFile | None, tcg: bool = False
             ) -> Jail:
        """Prepare the launch of ``spec``: hand its files over, make its cgroups. Under
        ``tcg`` QEMU runs without transparent huge pages (see :class:`.spawn.Jail`).

        :raises CorralError: when a file cannot be handed over or a cgroup not made.
        """
        paths: list[str | Path] = [d.path for d in spec.disks] + [serial_log]
        paths += [p for p in (spec.vmstate, spec.kernel, spec.initrd) if p]
        if ram is not None:
            paths.append(ram.path)
        self.hand_over(paths)
        procs: tuple[Path, ...] = ()
        if self.tag is not None:
            procs = tuple(cgroups.make_limits(self.tag, spec.name, self.memory_limit(spec),
                                              self.pids_max))
        user = self.user
        return Jail(uid=user.uid if user else None, gid=user.gid if user else None,
                    home=self.home, visible=VISIBLE, cgroups=procs, no_thp=tcg)

    def memory_limit(self, spec: VMSpec) -> int:
        return spec.memory_bytes + self.memory_overhead

    def describe(self) -> dict[str, Any]:
        """The daemon's confinement settings in force (``corral host info``)."""
        return {"user": self.user.name if self.user else None,
                "uid": self.user.uid if self.user else None,
                "seccomp": self.sandbox, "private_home": self.home is not None,
                "cgroup_limits": self.tag is not None,
                "memory_overhead_bytes": self.memory_overhead if self.tag else None,
                "pids_max": self.pids_max if self.tag else None,
                "host_guard": self.host_guard, "host_guard_up": self.guard_up,
                "off": dict(self.off)}


def facts(pid: int) -> dict[str, Any] | None:
    """What confines process ``pid`` as the kernel tells it: its user, its seccomp mode, its
    cgroups with their limits, and whether it has a mount namespace of its own. None when
    the process is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    uid = int(fields.get("Uid", "0").split()[0])
    try:
        private = os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    except OSError:
        private = False
    limits = cgroups.limits_of(pid)
    return {"user": qemu_user.user_name(uid), "uid": uid,
            "seccomp": _SECCOMP.get(fields.get("Seccomp", "0").strip(), "unknown"),
            "private_home": private,
            "memory_limit_bytes": limits.get("memory", {}).get("limit"),
            "pids_max": limits.get("pids", {}).get("limit"),
            "cgroups": {k: v["group"] for k, v in limits.items()}}


class KnownFacts:
    """:func:`facts` of the QEMUs the driver runs, read once per process. What confines a
    QEMU is fixed before it answers its monitor (user, mount namespace and cgroup limits
    before exec, the seccomp filter before the monitor's greeting), and reading it costs a
    dozen /proc and /sys reads that every view of a live VM (a pause's answer, each line of
    a list) would pay again. A process's facts are dropped when it ends: pids are reused."""

    def __init__(self) -> None:
        self._of: dict[int, dict[str, Any]] = {}

    def of(self, pid: int, known: bool) -> dict[str, Any] | None:
        """``known``: the driver runs ``pid`` (started or adopted, not ended), so its facts
        are kept; any other pid's are read afresh."""
        found = self._of.get(pid) if known else None
        if found is None:
            found = facts(pid)
            if found is not None and known:
                self._of[pid] = found
        return found

    def keep(self, pids: Iterable[int]) -> None:
        """Forget every process but ``pids`` (the ones still running)."""
        alive = set(pids)
        self._of = {pid: f for pid, f in self._of.items() if pid in alive}
