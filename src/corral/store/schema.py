"""The store's tables (SQLAlchemy Core). Changes go through an Alembic migration."""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Float, Integer, MetaData, String, Table, Text

metadata = MetaData()

vms = Table(
    "vms", metadata,
    Column("name", String(64), primary_key=True),
    Column("uid", String(36), nullable=False),
    Column("spec", Text, nullable=False),  # JSON of corral.domain.specs.VMSpec
    Column("state", String(16), nullable=False),
    Column("pid", Integer),
    Column("pid_start", Integer),  # /proc/PID/stat start time, guards against pid reuse
    Column("accel", String(8)),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("ready_at", Float),
    Column("exit_reason", Text),
    Column("updated_at", Float, nullable=False),
    Column("saved_state", Text),  # path of the state file while the VM is saved
    Column("saved_running", Boolean),  # whether it ran (else was paused) when saved
    Column("current_snapshot", String(64)),  # parent of the next snapshot
    Column("project", String(64), nullable=False, default="default"),
)

disks = Table(
    "disks", metadata,
    Column("name", String(64), primary_key=True),
    Column("path", Text, nullable=False),
    Column("format", String(8), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("vm", String(64)),  # the VM it is attached to, if any
    Column("project", String(64), nullable=False, default="default"),
)

kv = Table(
    "kv", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),  # JSON
)

snapshots = Table(
    "snapshots", metadata,
    Column("vm", String(64), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("parent", String(64)),
    Column("created_at", Float, nullable=False),
    Column("memory", Boolean, nullable=False),  # holds the running state, not only disks
    Column("running", Boolean, nullable=False),  # the guest ran (else was paused) when taken
    Column("vm_state", String(16), nullable=False),
)

events = Table(
    "events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),
    Column("vm", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("detail", Text, nullable=False, default="{}"),
    Column("project", String(64), nullable=False, default="default", index=True),
)

# --- virtual networks (corral.store.networks) ---
networks = Table(
    "networks", metadata,
    Column("name", String(64), primary_key=True),
    Column("plan", Text, nullable=False),  # JSON of corral.host.network.NetworkPlan
    Column("isolated", Boolean, nullable=False),  # no router may join it
    Column("policy", String(8), nullable=False),  # the firewall's default: accept or drop
    Column("created_at", Float, nullable=False),
    Column("project", String(64), nullable=False, default="default"),
)

routers = Table(
    "routers", metadata,
    Column("name", String(64), primary_key=True),
    Column("plan", Text, nullable=False),  # JSON of corral.host.network.RouterPlan
    Column("created_at", Float, nullable=False),
    Column("project", String(64), nullable=False, default="default"),
)

router_legs = Table(
    "router_legs", metadata,
    Column("network", String(64), primary_key=True),  # a network has one router at most
    Column("router", String(64), nullable=False),
    Column("plan", Text, nullable=False),  # JSON of corral.host.network.Leg
)

forwards = Table(
    "forwards", metadata,
    Column("proto", String(4), primary_key=True),
    Column("host_port", Integer, primary_key=True),
    Column("router", String(64), nullable=False),
    Column("vm", String(64), nullable=False),
    Column("ip", String(15), nullable=False),
    Column("port", Integer, nullable=False),
)

firewall_rules = Table(
    "firewall_rules", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("network", String(64)),  # a network's rule; None: a VM's, on each of its networks
    Column("vm", String(64)),  # the VM the rule opens, or None: every VM of the network
    Column("proto", String(4), nullable=False),
    Column("port", Integer),  # None: every port
    Column("source", String(18), nullable=False),
    sqlite_autoincrement=True,  # a removed rule's id is never handed out again
)

net_records = Table(
    "net_records", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),  # the order they were made
    Column("owner", String(140), nullable=False, index=True),  # network:N, router:R[/N], vm:V
    Column("kind", String(16), nullable=False),
    Column("name", String(32), nullable=False),
    Column("netns", String(16)),
    Column("detail", Text, nullable=False),
)

# --- projects and API tokens (corral.store.access) ---
projects = Table(
    "projects", metadata,
    Column("name", String(64), primary_key=True),
    Column("max_vms", Integer),  # None: no limit
    Column("max_cpus", Integer),
    Column("max_memory", Integer),  # bytes
    Column("max_disk", Integer),  # bytes
    Column("created_at", Float, nullable=False),
)

tokens = Table(
    "tokens", metadata,
    Column("name", String(64), primary_key=True),
    Column("id", String(32), nullable=False, unique=True),  # the public part of the secret
    Column("salt", String(64), nullable=False),
    Column("hash", String(64), nullable=False),  # sha256(salt + secret), hex
    Column("role", String(16), nullable=False),
    Column("project", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float),  # None: never
)
