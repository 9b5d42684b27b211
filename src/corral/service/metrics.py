"""The daemon's Prometheus metrics: one registry per service, read from cached figures.

A scrape walks the VM records (memory) and :class:`~corral.service.telemetry.Telemetry`'s
cache, never a guest or a monitor, so it costs the same whether a guest answers or not.
Names follow Prometheus' conventions: the unit in the name, ``_total`` on counters, one
``vm`` label per VM (``disk`` and ``nic`` for devices). Histograms: queue waits, cold boots
and warm starts (from the event stream), API requests by route (observed by the API).
Warm pools: each pool's size, free clones, hand-outs, misses, clones replaced and mean
refill time (``pool`` label; the pools of the caller's project).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from corral.domain.states import State
from corral.host import procstat
from corral.service import access
from corral.service.events import EventHub
from corral.service.runtime import VMRuntime
from corral.service.scheduling import Scheduler
from corral.service.telemetry import Telemetry

if TYPE_CHECKING:
    from corral.service.pools import Pools

BOOT_BUCKETS = (0.25, 0.5, 1, 1.5, 2, 3, 4, 5, 7.5, 10, 15, 30, 60, 120)
WARM_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)
WAIT_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400)
API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30)
DISK = (("rd_bytes", "block_read_bytes", "bytes read from the disk"),
        ("wr_bytes", "block_written_bytes", "bytes written to the disk"),
        ("rd_operations", "block_read_ops", "read operations on the disk"),
        ("wr_operations", "block_write_ops", "write operations on the disk"))
NIC = (("rx_bytes", "network_receive_bytes", "bytes the guest received on the NIC"),
       ("tx_bytes", "network_transmit_bytes", "bytes the guest sent on the NIC"),
       ("rx_packets", "network_receive_packets", "packets the guest received on the NIC"),
       ("tx_packets", "network_transmit_packets", "packets the guest sent on the NIC"))
KINDS = (("cpus", "cpus", ""), ("memory", "memory", "_bytes"), ("disk", "disk", "_bytes"))


class Metrics:
    """The registry and the histograms the front door fills (API requests)."""

    def __init__(self, rt: VMRuntime, sched: Scheduler, hub: EventHub,
                 telemetry: Telemetry, pools: Pools | None = None) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.queue_wait = Histogram("corral_queue_wait_seconds", "time a start request waited "
                                    "in the admission queue", buckets=WAIT_BUCKETS, registry=reg)
        self.boot = Histogram("corral_vm_boot_duration_seconds", "cold boot, from QEMU's start "
                              "to the guest agent's answer", buckets=BOOT_BUCKETS, registry=reg)
        self.warm = Histogram("corral_vm_warm_start_duration_seconds", "warm start from a "
                              "snapshot, from the request to the guest agent's answer",
                              buckets=WARM_BUCKETS, registry=reg)
        self.requests = Histogram("corral_api_request_duration_seconds", "API requests by "
                                  "route, method and status", ["route", "method", "status"],
                                  buckets=API_BUCKETS, registry=reg)
        self.request_count = Counter("corral_api_requests", "API requests by route, method "
                                     "and status", ["route", "method", "status"], registry=reg)
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        telemetry.durations.sinks["queue_wait"].append(self.queue_wait.observe)
        telemetry.durations.sinks["boot"].append(self.boot.observe)
        telemetry.durations.sinks["warm_start"].append(self.warm.observe)
        reg.register(_Figures(rt, sched, hub, telemetry, pools))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        series = self._series.get((route, method, status))
        if series is None:  # (labels() locks and builds its key each time: kept here)
            labels = (route, method, str(status))
            series = self._series[route, method, status] = (
                self.requests.labels(*labels), self.request_count.labels(*labels))
        series[0].observe(seconds)
        series[1].inc()

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format."""
        return generate_latest(self.registry)


class _Figures(Collector):
    """Per-VM, host, queue and daemon figures, made at each scrape from cached values."""

    def __init__(self, rt: VMRuntime, sched: Scheduler, hub: EventHub, tel: Telemetry,
                 pools: Pools | None) -> None:
        self.rt, self.sched, self.hub, self.tel, self.pools = rt, sched, hub, tel, pools

    def describe(self) -> list[Metric]:
        return []  # made at each scrape: nothing to check names against in advance

    def collect(self) -> Iterator[Metric]:
        yield from self._vms()
        yield from self._host()
        yield from self._pools()
        yield from self._daemon()

    def _vms(self) -> Iterator[Metric]:
        g = _Families()
        for rec in self.rt.db.list_vms():
            if not access.in_scope(rec.project):  # a token's project sees its own VMs
                continue
            vm = rec.name
            g.gauge("vm_vcpus", "virtual CPUs", "vm").add_metric([vm], rec.spec.cpus)
            g.gauge("vm_memory_size_bytes", "guest memory size", "vm").add_metric(
                [vm], rec.spec.memory_bytes)
            states = g.gauge("vm_state", "1 for the state the VM is in", "vm", "state")
            for s in State:
                states.add_metric([vm, s.value], 1.0 if rec.state == s else 0.0)
            boot = rec.boot_seconds() if vm in self.rt.live else None
            if boot is not None:
                g.gauge("vm_boot_seconds", "its last boot, from QEMU's start to the guest "
                        "agent's answer", "vm").add_metric([vm], boot)
            f = self.tel.figures.get(vm)
            if f is None:
                continue
            if f["cpu_seconds"] is not None:
                g.counter("vm_cpu_seconds", "CPU time of its QEMU process", "vm").add_metric(
                    [vm], f["cpu_seconds"])
            if f["rss_bytes"] is not None:
                g.gauge("vm_resident_memory_bytes", "resident memory of its QEMU process",
                        "vm").add_metric([vm], f["rss_bytes"])
            for disk, stats in f["disks"].items():
                for key, name, doc in DISK:
                    g.counter(f"vm_{name}", doc, "vm", "disk").add_metric(
                        [vm, disk], stats.get(key, 0))
            for nic, stats in f["nics"].items():
                for key, name, doc in NIC:
                    g.counter(f"vm_{name}", doc, "vm", "nic").add_metric([vm, nic], stats[key])
        yield from g.all()

    def _host(self) -> Iterator[Metric]:
        inv = self.sched.inventory
        total, capacity = inv.total.as_dict(), inv.capacity.as_dict()
        alloc, free = inv.to_dict()["allocated"], inv.free.as_dict()
        ratio = inv.allocation_ratio()
        g = _Families()
        for kind, name, unit in KINDS:
            assert isinstance(alloc, dict)
            g.gauge(f"host_{name}{unit}", f"the host's {name}").add_metric([], total[kind])
            g.gauge(f"host_{name}_capacity{unit}", f"{name} VMs may reserve (the host's "
                    "times its overcommit ratio)").add_metric([], capacity[kind])
            g.gauge(f"host_{name}_allocated{unit}", f"{name} reserved by VMs").add_metric(
                [], alloc[kind])
            g.gauge(f"host_{name}_free{unit}", f"{name} left to reserve").add_metric(
                [], free[kind])
            g.gauge("host_allocation_ratio", "allocated / total", "resource").add_metric(
                [kind], ratio[kind])
        g.gauge("queue_length", "start requests waiting for capacity").add_metric(
            [], len(self.sched.queue))
        yield from g.all()

    def _pools(self) -> Iterator[Metric]:
        g = _Families()
        for p in self.pools.list() if self.pools is not None else []:
            name = [p["name"]]
            g.gauge("pool_size", "clones the pool keeps", "pool").add_metric(name, p["size"])
            g.gauge("pool_free", "clones ready to hand out", "pool").add_metric(name, p["free"])
            g.counter("pool_handouts", "clones handed out", "pool").add_metric(
                name, p["handouts"])
            g.counter("pool_misses", "requests that found the pool empty", "pool").add_metric(
                name, p["misses"])
            g.counter("pool_replaced", "clones replaced after they crashed while waiting",
                      "pool").add_metric(name, p["replaced"])
            if p["refill_seconds"] is not None:
                g.gauge("pool_refill_seconds", "mean time to make a clone (warm start to "
                        "paused)", "pool").add_metric(name, p["refill_seconds"])
        yield from g.all()

    def _daemon(self) -> Iterator[Metric]:
        g = _Families()
        g.gauge("daemon_resident_memory_bytes", "the daemon's resident memory").add_metric(
            [], procstat.own_rss_bytes())
        g.gauge("event_stream_clients", "clients following the event stream").add_metric(
            [], len(self.hub.subscribers))
        g.counter("event_stream_dropped_clients", "stream clients dropped for falling "
                  "behind").add_metric([], self.hub.dropped_total)
        g.gauge("metrics_gather_duration_seconds", "the last gathering of VM figures").add_metric(
            [], self.tel.gather_seconds)
        yield from g.all()


class _Families:
    """Metric families by name, made on first use (``corral_`` prefixed)."""

    def __init__(self) -> None:
        self.made: dict[str, Any] = {}

    def gauge(self, name: str, doc: str, *labels: str) -> GaugeMetricFamily:
        if name not in self.made:
            self.made[name] = GaugeMetricFamily(f"corral_{name}", doc, labels=list(labels))
        fam: GaugeMetricFamily = self.made[name]
        return fam

    def counter(self, name: str, doc: str, *labels: str) -> CounterMetricFamily:
        if name not in self.made:
            self.made[name] = CounterMetricFamily(f"corral_{name}", doc, labels=list(labels))
        fam: CounterMetricFamily = self.made[name]
        return fam

    def all(self) -> Iterator[Metric]:
        yield from self.made.values()
