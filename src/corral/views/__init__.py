"""What the daemon answers: one typed view per resource, shared by every front door.

These are plain ``TypedDict``\\ s (standard library only): the REST API documents its
response bodies with them (``/openapi.json``), and ``corral.Client`` annotates its methods with
them. The Client imports this module only for type checkers, so its start-up pays nothing;
the daemon imports it with pydantic, which wants ``typing_extensions.TypedDict`` before
Python 3.12.

A field marked ``NotRequired`` is left out of some answers (``get`` adds live facts that
``list`` does not ask QEMU for). Views may gain fields; clients ignore what they do not know.
"""

from __future__ import annotations

from typing import Any

from corral.views._typed import Error, NotRequired, TypedDict
from corral.views.access import Principal, Project, Quotas, Token, TokenCreated
from corral.views.migrate import (
    ArrivalAborted,
    DrainMove,
    DrainReport,
    LastMigration,
    Migration,
    MigrationCancelled,
    MigrationPlan,
)
from corral.views.pools import Pool, PoolRecommendation, PoolTake
from corral.views.stacks import (
    Config,
    FieldChange,
    Setting,
    SettingChange,
    Stack,
    StackChange,
    StackEvent,
    StackPlan,
)


class VMDisk(TypedDict):
    path: str
    format: str
    readonly: bool
    owned: NotRequired[bool]
    id: NotRequired[str | None]
    bus: NotRequired[str]
    boot: NotRequired[bool]
    name: NotRequired[str | None]
    iops: NotRequired[int | None]
    bps: NotRequired[int | None]
    port: NotRequired[str | None]
    stats: NotRequired[dict[str, Any] | None]


class VMNic(TypedDict):
    mode: str
    mac: str
    id: NotRequired[str | None]
    hostfwd: NotRequired[list[str]]
    network: NotRequired[str | None]
    ip: NotRequired[str | None]
    fixed_ip: NotRequired[bool]
    ifname: NotRequired[str | None]
    planned_for: NotRequired[str | None]
    port: NotRequired[str | None]


class Confinement(TypedDict):
    """What confines a running VM's QEMU, as the kernel reports it (``/proc/PID``)."""

    user: str
    uid: int
    seccomp: str  # filter, strict or off
    private_home: bool  # a mount namespace that shows it only its part of the home
    memory_limit_bytes: int | None
    pids_max: int | None
    cgroups: dict[str, str]


class VM(TypedDict):
    name: str
    state: str
    ready: bool
    pool: NotRequired[PoolTake]  # only in the answer of a hand-out from a pool
    migration: NotRequired[Migration]  # only in the answer of a live migration
    uid: NotRequired[str]
    accel: NotRequired[str | None]
    pid: NotRequired[int | None]
    cpus: int
    memory_bytes: int
    machine: NotRequired[str]
    arch: NotRequired[str]
    image: NotRequired[str | None]
    uptime_seconds: NotRequired[float | None]
    boot_seconds: NotRequired[float | None]
    exit_reason: NotRequired[str | None]
    last_migration: NotRequired[LastMigration | None]
    nics: list[VMNic]
    disks: list[VMDisk]
    console_socket: NotRequired[str | None]
    serial_log: NotRequired[str]
    created_at: NotRequired[float]
    operations: list[str]
    qemu_status: NotRequired[str | None]
    confinement: NotRequired[Confinement | None]
    host: NotRequired[str | None]  # in a cluster: the host it is on (None: queued)
    last_state: NotRequired[str]  # its host is down: the state it last reported
    project: NotRequired[str]


class Disk(TypedDict):
    name: str
    path: str
    format: str
    vm: str | None
    project: NotRequired[str]
    created_at: NotRequired[float]
    size_bytes: NotRequired[int | None]
    allocated_bytes: NotRequired[int | None]
    backing: NotRequired[str | None]


class Snapshot(TypedDict):
    vm: str
    name: str
    parent: str | None
    memory: bool
    created_at: NotRequired[float]
    running: NotRequired[bool]
    vm_state: NotRequired[str]
    depth: NotRequired[int]
    current: NotRequired[bool]
    template: NotRequired[bool]  # its warm-start template is made


# "from" is a keyword, hence the functional form
FirewallRule = TypedDict("FirewallRule", {
    "id": int, "network": "str | None", "vm": "str | None", "allow": str, "from": str})


class Firewall(TypedDict):
    policies: dict[str, str]
    rules: list[FirewallRule]


class Port(TypedDict):
    vm: str
    nic: str | None
    mac: str
    ip: str | None
    tap: str | None
    dns: NotRequired[str | None]
    host: NotRequired[str | None]  # on a network that spans hosts: where the VM's NIC is
    lease: NotRequired[Any]
    counters: NotRequired[Any]


class Network(TypedDict):
    name: str
    subnet: str
    gateway: NotRequired[str]
    dhcp: bool
    dhcp_server: NotRequired[str | None]
    pool: NotRequired[str]
    isolated: bool
    bridge: NotRequired[str]
    router: str | None
    policy: str
    rules: list[FirewallRule]
    ports: list[Port]
    created_at: NotRequired[float]
    vni: NotRequired[int]  # a network that spans the hosts of a cluster: its VXLAN id,
    home: NotRequired[str]  # the host of its DHCP/DNS,
    mtu: NotRequired[int | None]  # the MTU its guests are told,
    hosts: NotRequired[list[str]]  # and the hosts that carry it now


class Forward(TypedDict):
    router: str
    proto: str
    host_port: int
    vm: str
    ip: str | None
    port: int


class Leg(TypedDict):
    network: str
    address: str


class Router(TypedDict):
    name: str
    uplink: bool
    host_address: str | None
    router_address: str | None
    networks: list[Leg]
    forwards: list[Forward]


class Removed(TypedDict):
    """What a forced removal took away with it (legs, NICs, forwards …)."""

    removed: list[str]


class Host(TypedDict):
    cpus: int
    memory_bytes: int
    memory_available_bytes: NotRequired[int]
    accel: str
    accel_reason: str
    qemu_version: NotRequired[str | None]
    kernel: NotRequired[str]
    hostname: NotRequired[str]
    scheduler: NotRequired[dict[str, Any]]
    home: NotRequired[str]
    vms: NotRequired[int]
    vms_running: NotRequired[int]
    confinement: NotRequired[dict[str, Any] | None]


class QueueEntry(TypedDict):
    position: int
    vm: str
    owner: str
    cpus: int
    memory_bytes: int
    priority: int
    effective_priority: NotRequired[float]
    expected_runtime: NotRequired[float | None]
    waiting_seconds: float
    request: NotRequired[Any]


class Event(TypedDict):
    """``vm``: the VM (or other object) it is about; ``kind`` ``audit``: a request, with
    ``detail`` ``who``, ``role``, ``action``, ``status`` and ``result``."""

    id: int
    ts: float
    vm: str
    kind: str
    detail: dict[str, Any]
    project: NotRequired[str]


class VMFigures(TypedDict):
    """What the daemon last gathered of a VM with a machine (``at``: when)."""

    at: float
    cpu_seconds: float | None
    rss_bytes: int | None
    disks: dict[str, dict[str, int]]   # node → rd_bytes, wr_bytes, rd_operations, …
    nics: dict[str, dict[str, int]]    # device → rx_bytes, tx_bytes, rx_packets, tx_packets


class StatsPoint(TypedDict):
    """One point of a VM's recent history: totals over its disks and NICs."""

    at: float
    cpu_seconds: float | None
    rss_bytes: int | None
    rd_bytes: int
    wr_bytes: int
    rx_bytes: int | None   # None: no NIC with host-side counters (user-mode NICs)
    tx_bytes: int | None


class VMStats(TypedDict):
    name: str
    state: str
    interval: float
    figures: VMFigures | None
    points: list[StatsPoint]


class WebInfo(TypedDict):
    """Where the daemon serves its web page (``url`` None: only on its unix socket)."""

    url: str | None
    socket: str


class TraceEntry(TypedDict):
    vm: str
    arrival: float
    owner: NotRequired[str]
    priority: NotRequired[int]
    cpus: NotRequired[int]
    start: NotRequired[float | None]
    end: NotRequired[float | None]
    runtime: NotRequired[float]  # end - start, once it ended


class Image(TypedDict):
    name: str
    arch: str
    path: str
    built_at: NotRequired[Any]


class ExecResult(TypedDict):
    """A finished guest command; ``stdout``/``stderr`` are base64 on the wire (bytes from the
    Client)."""

    exitcode: int | None
    signal: int | None
    stdout: Any
    stderr: Any
    truncated: bool
    seconds: float


class BatchResult(ExecResult):
    name: str
    pool: NotRequired[PoolTake]
    wait_and_boot_seconds: float
    run_seconds: float
    total_seconds: float


class Logs(TypedDict):
    data: str
    offset: int


class Interface(TypedDict):
    name: str | None
    mac: str | None
    addresses: list[str]
    ipv4: list[str]


class FileWritten(TypedDict):
    path: str
    size: int
    sha256: str


class Export(TypedDict):
    """A VM export the client wrote (``Client.export``; the daemon only sends the bytes)."""

    file: str
    size: int
    vm: str
    saved: bool
    files: list[str]


class ClusterHost(TypedDict):
    name: str
    state: str  # up, down, cordoned or draining
    address: str
    leader: bool
    cpus: int
    memory_bytes: int
    disk_bytes: int
    accel: str
    arch: str
    labels: dict[str, str]
    vms: int
    allocation_ratio: dict[str, float]
    silent_seconds: float


class JoinToken(TypedDict):
    token: str
    cluster: str


class PlacementExplained(TypedDict):
    vm: str
    host: str | None
    weigher: str
    hosts: dict[str, str]  # each host's reason: chosen, fits, or why not


class Upload(TypedDict):
    """A file the client sent (``POST /v1/uploads``): name it as ``upload:ID`` (kernel,
    initrd) or ``upload=ID`` (a disk, image and VM import); it is used once."""

    upload: str
    size: int
    sha256: str


__all__ = [
    "VM", "ArrivalAborted", "BatchResult", "ClusterHost", "Config", "Disk", "DrainMove",
    "DrainReport", "Error", "Event", "ExecResult", "Export", "FieldChange", "FileWritten",
    "Firewall", "FirewallRule", "Forward", "Host", "Image", "Interface", "JoinToken",
    "LastMigration", "Leg", "Logs", "Migration", "MigrationCancelled", "MigrationPlan", "Network",
    "PlacementExplained", "Pool", "PoolRecommendation", "PoolTake", "Port", "Principal",
    "Project", "QueueEntry", "Quotas", "Removed", "Router", "Setting", "SettingChange",
    "Snapshot", "Stack", "StackChange", "StackEvent", "StackPlan", "StatsPoint", "Token",
    "TokenCreated", "TraceEntry", "Upload", "VMDisk", "VMFigures", "VMNic", "VMStats",
    "WebInfo",
]
