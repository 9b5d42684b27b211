"""The composition root of the service: it builds the VM runtime, the scheduler, the
network state and the slices, wires the hooks between them, and opens and closes them.

Front doors use only the slices: ``vms``, ``snapshots``, ``disks``, ``guest``, ``images``,
``uploads``, ``host``, ``networks``, ``routers``, ``pools``, ``stacks``, ``projects`` and
``tokens``, and the observers: ``events`` (the live event stream), ``telemetry`` (cached
figures of every VM) and ``metrics`` (Prometheus), all available once :meth:`Manager.open`
has run. Use-case modules never receive the Manager: each gets the runtime and the
collaborators it needs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from corral.config import Paths
from corral.domain.specs import VMSpec
from corral.engine import accel as accel_mod
from corral.engine.driver import Driver
from corral.errors import CorralError
from corral.service import (
    adoption,
    confinement,
    hostpaths,
    netoverlay,
    netreconcile,
    nics,
    overlaynets,
    slices,
)
from corral.service.events import EventHub
from corral.service.guest import GuestService
from corral.service.metrics import Metrics
from corral.service.netstate import Networks
from corral.service.pools import Pools
from corral.service.projects import Projects, Tokens
from corral.service.runtime import VMRuntime
from corral.service.scheduling import Scheduler
from corral.service.stackrun import Runner
from corral.service.stacks import Stacks
from corral.service.telemetry import Telemetry
from corral.service.uploads import Uploads
from corral.service.vms import VMs
from corral.store.db import Store, VMRecord

log = logging.getLogger(__name__)
if TYPE_CHECKING:
    from corral.engine.qemu.driver import QemuDriver
    from corral.service.cluster import Member


def _cluster_of() -> tuple[str, str] | None:
    """(the PostgreSQL URL, this host's name) when the daemon is one host of a cluster."""
    from corral import settings

    url = settings.value("cluster.url")
    if not url:
        return None
    from corral.service.cluster import host_name

    return str(url), host_name()


class _Hooks:
    """What the runtime asks of the network and the scheduler, and the check of the files
    a machine will open in place."""

    def __init__(self, paths: Paths, net: Networks, sched: Scheduler) -> None:
        self.paths = paths
        self.net = net
        self.sched = sched

    async def plug(self, rec: VMRecord) -> None:
        hostpaths.recheck_spec(rec.spec, self.paths)
        await nics.plug(self.net, rec)

    def unplug(self, name: str) -> None:
        nics.unplug(self.net, name)

    def released(self, name: str) -> None:
        self.sched.release(name)  # its cgroup goes with it

    async def forget(self, name: str, spec: VMSpec) -> None:
        await nics.forget(self.net, name, spec)

    async def moved(self, name: str, spec: VMSpec) -> None:
        await nics.moved(self.net, name, spec)


class Manager:
    """The in-process VM manager. The daemon serves it; tests may drive it directly."""

    def __init__(self, paths: Paths | None = None, driver: Driver | None = None) -> None:
        self.paths = paths or Paths.from_env()
        self.accel = accel_mod.detect()
        self._qemu: QemuDriver | None = None  # the QEMU driver it made: it confines that one
        if driver is None:
            from corral.engine.qemu.driver import QemuDriver

            driver = self._qemu = QemuDriver(self.accel.name, accel_mod.tsc_khz())
        self.driver = driver
        #: (listen address, certificate fingerprint) of the TLS API, set by the daemon
        self.endpoint: tuple[str, str] | None = None
        self._opened: _Opened | None = None
        #: set once the open has taken up every VM (networks, queue and pools come after)
        self.adopted = asyncio.Event()

    async def open(self) -> None:
        """Open the store, re-adopt every VM whose machine is still alive, settle what an
        earlier daemon left half-done, and start the queue."""
        from corral.engine.qemu.process import become_subreaper

        become_subreaper()
        self.adopted.clear()
        confinement.private_home(self.paths)
        # every directory a QEMU's private view of the home shows exists before the first
        # QEMU starts: one missing then stays missing for that QEMU (a named disk made later
        # could not be hot-plugged into it)
        for d in (self.paths.images, self.paths.run, self.paths.home / "vms",
                  self.paths.home / "disks"):
            d.mkdir(parents=True, exist_ok=True)
        if self._qemu is not None:
            self._qemu.confinement = confinement.decide(self.paths, self.accel.name)
        cluster = _cluster_of()
        t0 = time.monotonic()
        rt = VMRuntime(self.paths, Store(self.paths.db, cluster), self.driver, self.accel.name)
        self._opened = opened = _Opened(rt, self.accel)
        opened.uploads.sweep_partial()
        try:
            if cluster is not None:
                from corral.service.cluster import Member

                opened.member = Member(rt, opened.sched, opened.vms, self.accel.name,
                                       opened.tokens, self.endpoint)
                opened.net.overlay = netoverlay.join(cluster, opened.member.endpoint)
                opened.member.on_beat.append(lambda: overlaynets.sync(opened.net))
                await opened.net.call(opened.net.overlay.refresh)  # for the reconcile
                await opened.member.fence()  # before anything else: no VM runs twice
            await adoption.adopt_all(rt)
            log.info("store opened and %d VMs taken up in %.2f s", len(rt.live),
                     time.monotonic() - t0)
            self.adopted.set()
            if self._qemu is not None:
                self._qemu.settle_guard()
            await netreconcile.reconcile(opened.net)  # before the queue may start VMs on nets
            opened.sched.load()
            opened.sched.dispatch()
            opened.pools.load()
            opened.telemetry.start()
            if opened.member is not None:
                await opened.member.open()
        except BaseException:
            if cluster is not None:
                await self.close()
            raise

    async def close(self) -> None:
        """Let go of every VM without stopping it: they outlive the daemon."""
        if self._opened is None:
            return
        opened, self._opened = self._opened, None
        self.adopted.clear()
        await opened.pools.close()
        if opened.member is not None:
            await opened.member.close()
        if opened.net.overlay is not None:
            opened.net.overlay.close()
        opened.events.close()
        await opened.telemetry.close()
        if self._qemu is not None:
            self._qemu.settle_guard(at_once=True)  # unless a QEMU of ours runs on
        await opened.rt.close()
        await opened.sched.close()
        opened.rt.db.close()
        self.paths.remove_leftovers()

    def _parts(self) -> _Opened:
        if self._opened is None:
            raise CorralError("the service is not open (Manager.open() was not called)")
        return self._opened

    @property
    def cluster(self) -> Member | None:
        """This daemon's part in a cluster; None on a single host."""
        return self._parts().member

    @property
    def is_open(self) -> bool:
        return self._opened is not None

    def cluster_member(self) -> Member:
        """:raises InvalidSpec: this daemon is not in a cluster."""
        member = self._parts().member
        if member is None:
            from corral.errors import InvalidSpec

            raise InvalidSpec("cluster", "this daemon is not in a cluster; start it with "
                                         "'corral serve --cluster postgresql://…'")
        return member

    @property
    def runtime(self) -> VMRuntime:
        return self._parts().rt

    @property
    def vms(self) -> VMs:
        return self._parts().vms

    @property
    def snapshots(self) -> slices.Snapshots:
        return self._parts().snapshots

    @property
    def disks(self) -> slices.Disks:
        return self._parts().disks

    @property
    def guest(self) -> GuestService:
        return self._parts().guest

    @property
    def images(self) -> slices.Images:
        return self._parts().images

    @property
    def uploads(self) -> Uploads:
        return self._parts().uploads

    @property
    def host(self) -> slices.Host:
        return self._parts().host

    @property
    def networks(self) -> slices.Networks:
        return self._parts().networks

    @property
    def routers(self) -> slices.Routers:
        return self._parts().routers

    @property
    def pools(self) -> Pools:
        return self._parts().pools

    @property
    def projects(self) -> Projects:
        return self._parts().projects

    @property
    def tokens(self) -> Tokens:
        return self._parts().tokens

    @property
    def events(self) -> EventHub:
        return self._parts().events

    @property
    def telemetry(self) -> Telemetry:
        return self._parts().telemetry

    @property
    def metrics(self) -> Metrics:
        return self._parts().metrics

    @property
    def stacks(self) -> Stacks:
        return self._parts().stacks


class _Opened:
    """Everything that exists while the service is open."""

    def __init__(self, rt: VMRuntime, accel: accel_mod.Accel) -> None:
        self.rt = rt
        self.events = EventHub(rt.db)  # before anything is recorded
        self.net = Networks(rt)
        self.sched = Scheduler(rt)
        rt.hooks = _Hooks(rt.paths, self.net, self.sched)
        self.vms = VMs(rt, self.sched, self.net)
        self.sched.start_admitted = self.vms.life.start_admitted
        self.guest = GuestService(rt, lambda name: name in self.sched.sliced_out)
        self.snapshots = slices.Snapshots(rt, self.vms.life)
        self.disks = slices.Disks(rt)
        self.images = slices.Images(rt)
        self.uploads = Uploads(rt.paths.home)
        self.host = slices.Host(rt, self.sched, accel, self.vms, self.guest)
        self.networks = slices.Networks(self.net)
        self.routers = slices.Routers(self.net)
        self.projects = Projects(rt, self.net)
        self.tokens = Tokens(rt)
        self.telemetry = Telemetry(rt, self.events)
        self.pools = Pools(rt, self.vms, self.guest, self.sched)
        self.metrics = Metrics(rt, self.sched, self.events, self.telemetry, self.pools)
        self.stacks = Stacks(rt, Runner(self.vms, self.disks, self.snapshots, self.networks,
                                        self.routers, self.guest))
        self.member: Member | None = None
