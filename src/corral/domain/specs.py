"""What a user asks for: VM specs, parsed, validated and defaulted in that order.

* **Parse**: pydantic checks the shape; unknown fields are refused (``extra="forbid"``).
* **Validate**: named rules check the meaning against the host's facts
  (:func:`validate_against_host`); each failure is an :class:`~corral.errors.InvalidSpec`
  that names the field and the fix.
* **Default**: :func:`normalise` fills every default in one place, so the stored spec is
  complete and a VM starts the same way after an upgrade changes a default.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from corral.domain import complaints
from corral.domain.complaints import NAME_PATTERN
from corral.domain.nics import check_nic
from corral.domain.sizes import parse_size
from corral.errors import InvalidSpec, not_a_name

NAME_RE = re.compile(NAME_PATTERN)
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
DEFAULT_IMAGE = "tiny"
DEFAULT_MEMORY = 256 << 20
MIN_MEMORY = 64 << 20
MAX_CPUS = 255
Machine = Literal["q35", "microvm", "virt"]
Arch = Literal["x86_64", "aarch64"]
MACHINES: dict[str, tuple[str, ...]] = {"x86_64": ("q35", "microvm"), "aarch64": ("virt",)}


def check_name(name: str, field: str = "name") -> str:
    """:raises InvalidSpec: unless ``name`` is 1-32 of a-z, 0-9 and '-', starting alnum."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidSpec(field, not_a_name(name))
    return name


class DiskRequest(BaseModel):
    """A disk for a new VM: a new blank disk of ``size``, an uploaded disk image (``upload``,
    an id from ``POST /v1/uploads``; it becomes the VM's own), or an existing file used in
    place at ``path`` (only inside a directory the host allows)."""

    model_config = ConfigDict(extra="forbid")
    size: str | None = None
    path: str | None = Field(None, description="a file used in place: only inside the "
                                               "daemon's allowed host paths (paths.allowed)")
    upload: str | None = Field(None, description="an upload id (POST /v1/uploads): the "
                                                 "image becomes the VM's own disk")
    format: Literal["qcow2", "raw"] | None = None
    readonly: bool = False


class NicRequest(BaseModel):
    """A NIC for a new VM: user-mode networking (with host port forwards ``hostfwd``), or a
    port on the Corral network ``network`` (with a fixed ``ip`` if given); see
    :mod:`corral.domain.nics`."""

    model_config = ConfigDict(extra="forbid")
    mode: Literal["user", "network"] | None = None  # None: "network" when network is named
    mac: str | None = None
    network: str | None = None
    ip: str | None = None
    hostfwd: list[str] = Field(default_factory=list)


class VMCreate(BaseModel):
    """The body of a create request, as a user writes it."""

    model_config = ConfigDict(extra="forbid")
    name: str
    image: str | None = None
    cpus: int = 1
    memory: str | int = "256M"
    kernel: str | None = None  # "upload:ID", or a path the host allows (see hostpaths)
    initrd: str | None = None  # the same
    cmdline: str | None = None
    machine: Machine | None = None  # default: the image's, else q35
    arch: Arch | None = None  # default: the image's
    cpu_model: str | None = None  # default: the image's, else max
    user_data: str | None = None  # cloud-init user-data (the text); makes a NoCloud seed
    ssh_keys: list[str] | None = None  # public keys for cloud-init's default user
    hostname: str | None = None  # for cloud-init (default: the VM's name)
    disks: list[DiskRequest] = Field(default_factory=list)
    nics: list[NicRequest] | None = None
    from_snapshot: str | None = None  # "VM:SNAPSHOT": a warm start from a memory snapshot
    owner: str = "default"
    priority: int = 0
    expected_runtime: str | float | None = None  # "30s", "5m", or seconds
    timeslice: bool = False
    cpu_weight: int | None = None
    cpu_max: str | float | None = None  # "50%" or 50
    pin: list[int] | None = None
    # placement across a cluster's hosts (corral.scheduler.placement)
    host: str | None = None  # this host and no other
    on: dict[str, str] | None = None  # only hosts with these labels
    group: str | None = None  # an affinity group (anti_affinity: an anti-affinity group)
    anti_affinity: bool = False
    ha: bool = False  # on shared storage; restarted on another host when its host is lost

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)


class DiskSpec(BaseModel):
    """A disk as stored: always a file path and a format."""

    model_config = ConfigDict(extra="forbid")
    path: str
    format: Literal["qcow2", "raw"]
    readonly: bool = False
    owned: bool = True  # made by Corral for this VM, removed with it
    id: str | None = None  # stable QEMU node/device id; None: by position (disk0, disk1 …)
    bus: Literal["virtio", "nvme"] = "virtio"
    boot: bool = False  # the disk firmware boots from (images without a kernel)
    name: str | None = None  # a named disk (corral disk create) attached to this VM
    iops: int | None = None  # IO limits: operations and bytes per second, read+write
    bps: int | None = None
    port: str | None = None  # the hot-plug port it sits behind (q35), if hot-plugged

    def node(self, index: int) -> str:
        return self.id or f"disk{index}"


class NicSpec(BaseModel):
    """A NIC as stored. A network NIC's port (address, tap) is planned by the network
    service for the VM named in ``planned_for``; a copy of it (a clone's) is planned anew."""

    model_config = ConfigDict(extra="forbid")
    mode: Literal["user", "network"] = "user"
    mac: str
    id: str | None = None  # stable QEMU device id; None: by position (nic0, nic1 …)
    hostfwd: list[str] = Field(default_factory=list)  # user mode, canonical (tcp::8022-:22)
    network: str | None = None
    ip: str | None = None  # the address the network reserved for it
    fixed_ip: bool = False  # the user chose ``ip``
    ifname: str | None = None  # its tap on the network's bridge
    planned_for: str | None = None
    port: str | None = None  # the hot-plug port it sits behind (q35), if hot-plugged

    def device(self, index: int) -> str:
        return self.id or f"nic{index}"


class Scheduling(BaseModel):
    """How the scheduler treats a VM: who owns it, how urgent and long it is, CPU sharing."""

    model_config = ConfigDict(extra="forbid")
    owner: str = "default"
    priority: int = 0
    expected_runtime: float | None = None  # seconds, as the user declared
    timeslice: bool = False  # shares CPU slots round robin with the other time-sliced VMs
    cpu_weight: int | None = None  # relative CPU share, 1-10000 (100 is the default)
    cpu_max: float | None = None  # cap in percent of one CPU (50: half a CPU)
    pin: list[int] | None = None  # host CPUs its vCPU threads may run on
    group: str | None = None  # placement group: its VMs share hosts (or, anti, never do)
    anti_affinity: bool = False
    ha: bool = False  # its files are on shared storage; the leader restarts it elsewhere


class Migrated(BaseModel):
    """A VM's last live migration, as the host it arrived on recorded it."""

    model_config = ConfigDict(extra="forbid")
    source: str       # the host it came from
    at: float         # when it arrived (epoch seconds)
    encrypted: bool   # the stream and the disk copies went over QEMU's TLS


class VMSpec(BaseModel):
    """A complete, defaulted VM spec: what the engine turns into a QEMU command line."""

    model_config = ConfigDict(extra="forbid")
    name: str
    arch: Arch = "x86_64"
    image: str | None
    cpus: int
    memory_bytes: int
    kernel: str | None  # None: firmware boots the first disk
    initrd: str | None
    cmdline: str
    machine: Machine
    cpu_model: str
    disks: list[DiskSpec]
    nics: list[NicSpec]
    agent: bool = True
    vmstate: str | None = None  # qcow2 file (no guest device) that holds snapshots' RAM
    sched: Scheduling = Field(default_factory=lambda: Scheduling())
    warm_template: str | None = None  # set until its first start: resume this template
    # the name its live machine was launched under, when the VM was renamed since (a pool
    # clone handed out): that machine's command line names the old run directory
    launched_as: str | None = None
    migrated: Migrated | None = None  # its last live migration here (not a clone's)


@dataclass(frozen=True)
class HostFacts:
    cpus: int
    memory_bytes: int


def parse_create(body: object) -> VMCreate:
    """Parse a request body.

    :raises InvalidSpec: naming the first wrong field.
    """
    try:
        return VMCreate.model_validate(body)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        cause = first.get("ctx", {}).get("error")
        if isinstance(cause, InvalidSpec):
            field = cause.field
        raise InvalidSpec(field, complaints.reason(first)) from err


def validate_against_host(req: VMCreate, host: HostFacts) -> int:
    """Check the meaning of ``req``; return the memory size in bytes.

    :raises InvalidSpec: naming the field and how to fix it.
    """
    if req.cpus < 1:
        raise InvalidSpec("cpus", f"{req.cpus} is not a CPU count; give at least 1")
    if req.cpus > MAX_CPUS:
        raise InvalidSpec("cpus", f"{req.cpus} is more than QEMU's limit of {MAX_CPUS}")
    memory = parse_size("memory", req.memory)
    if memory < MIN_MEMORY:
        raise InvalidSpec("memory", f"{req.memory} is too small; give at least 64M")
    if memory > host.memory_bytes:
        raise InvalidSpec("memory", f"{req.memory} is more than this host's "
                                    f"{host.memory_bytes >> 20} MiB; give less")
    if req.kernel is None and req.initrd:
        raise InvalidSpec("kernel", "--initrd needs --kernel")
    for i, nic in enumerate(req.nics or []):
        if nic.mac is not None and not MAC_RE.match(nic.mac.lower()):
            raise InvalidSpec(f"nics.{i}.mac", f"'{nic.mac}' is not a MAC like 52:54:00:12:34:56")
        check_nic(f"nics.{i}", nic.mode, nic.network, nic.ip, nic.hostfwd)
    for i, disk in enumerate(req.disks):
        if [disk.size, disk.path, disk.upload].count(None) != 2:
            raise InvalidSpec(f"disks.{i}", "give one of size (a new disk), upload (an "
                                            "uploaded image) or path (a file used in place)")
        if disk.size is not None:
            parse_size(f"disks.{i}.size", disk.size, default_unit="G")
    return memory


def parse_duration(field: str, value: str | float) -> float:
    """Seconds from ``30``, ``30s``, ``5m``, ``1.5h``.

    :raises InvalidSpec: naming ``field`` when it is not a positive duration.
    """
    text = str(value).strip().lower()
    scale = {"s": 1.0, "m": 60.0, "h": 3600.0}.get(text[-1:])
    number = text[:-1] if scale else text
    try:
        seconds = float(number) * (scale or 1.0)
    except ValueError:
        seconds = -1.0
    if not seconds > 0 or seconds != seconds:
        raise InvalidSpec(field, f"'{value}' is not a duration; use e.g. 30s, 5m or 2h")
    return seconds


def scheduling(req: VMCreate, host: HostFacts) -> Scheduling:
    """The scheduling part of a request, checked.

    :raises InvalidSpec: naming the field.
    """
    if not re.match(r"^[A-Za-z0-9_.@-]{1,64}$", req.owner):
        raise InvalidSpec("owner", f"'{req.owner}' is not an owner name")
    if req.cpu_weight is not None and not 1 <= req.cpu_weight <= 10000:
        raise InvalidSpec("cpu_weight", f"{req.cpu_weight} is out of range; give 1-10000")
    cap = None
    if req.cpu_max is not None:
        try:
            cap = float(str(req.cpu_max).strip().rstrip("%"))
        except ValueError:
            cap = -1.0
        if not 0 < cap <= 100 * host.cpus:
            raise InvalidSpec("cpu_max", f"'{req.cpu_max}' is not a CPU cap; give a percentage "
                                         f"of one CPU up to {100 * host.cpus}%, e.g. 50%")
    if req.group is not None and not re.match(r"^[A-Za-z0-9_.-]{1,64}$", req.group):
        raise InvalidSpec("group", f"'{req.group}' is not a group name")
    if req.anti_affinity and req.group is None:
        raise InvalidSpec("anti_affinity", "an anti-affinity needs its --group")
    if req.pin is not None and (not req.pin or any(not 0 <= c < host.cpus for c in req.pin)):
        raise InvalidSpec("pin", f"{req.pin} names CPUs this host does not have "
                                 f"(0-{host.cpus - 1})")
    return Scheduling(owner=req.owner, priority=req.priority,
                      expected_runtime=None if req.expected_runtime is None
                      else parse_duration("expected_runtime", req.expected_runtime),
                      timeslice=req.timeslice, cpu_weight=req.cpu_weight, cpu_max=cap,
                      pin=req.pin, group=req.group, anti_affinity=req.anti_affinity,
                      ha=req.ha)


def new_mac() -> str:
    """A random locally administered MAC in QEMU's 52:54:00 range."""
    tail = secrets.token_bytes(3)
    return "52:54:00:" + ":".join(f"{b:02x}" for b in tail)
