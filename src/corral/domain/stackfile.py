"""A stack file: the YAML that ``corral apply`` reads, its shape (pydantic models, published
as a JSON Schema by ``corral stack schema``) and the line of every field.

The YAML is composed into nodes first, so that every mapping key and sequence item keeps its
line (:func:`load`): a duplicate key, a value of the wrong shape, an unknown field, each is
refused with ``FILE:LINE: FIELD: reason``. Anchors and merge keys (``<<: *student``) work;
a merged field has the line where the anchor wrote it. Meaning (references, cycles,
addresses) is checked by :mod:`corral.domain.stackgraph`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from corral.domain import complaints
from corral.domain.complaints import NAME_PATTERN
from corral.errors import InvalidSpec

Path = tuple[str | int, ...]
MAX_COUNT = 100
NAME = NAME_PATTERN


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NetworkDef(_Strict):
    """A virtual switch with DHCP and DNS."""

    subnet: str = Field(description="an IPv4 subnet, e.g. 10.20.0.0/24")
    dhcp: bool = True
    isolated: bool = Field(False, description="no router may join it")


class ForwardDef(_Strict):
    """A guest port published on a host port through the router's uplink."""

    proto: Literal["tcp", "udp"] = "tcp"
    host_port: int = Field(ge=1, le=65535)
    vm: str = Field(pattern=NAME, description="a VM of the stack (or of the daemon)")
    port: int = Field(ge=1, le=65535)


class RouterDef(_Strict):
    """A router joining networks; with ``uplink`` it reaches the host and forwards ports."""

    uplink: bool = False
    networks: list[str] = Field(default_factory=list)
    forwards: list[ForwardDef] = Field(default_factory=list)


class RuleDef(_Strict):
    """A firewall rule: allow ``allow`` (tcp/22, udp, icmp) from ``source`` to a VM or to
    every VM of a network."""

    target: str = Field(description="a VM's or a network's name (vm:NAME, network:NAME)")
    allow: str
    source: str = "0.0.0.0/0"


class DiskDef(_Strict):
    """A named disk, attached to the VMs that list it."""

    size: str = Field(description="e.g. 1G; grown in place when it grows")
    format: Literal["qcow2", "raw"] = "qcow2"


class SnapshotDef(_Strict):
    """A snapshot of a VM of the stack, taken once it is ready; ``memory`` keeps its running
    state, so VMs ``from_snapshot: VM:SNAPSHOT`` start warm from it."""

    vm: str = Field(pattern=NAME)
    memory: bool = True


class NicDef(_Strict):
    """A NIC on a network (a fixed ``ip`` if given), or user-mode with host forwards."""

    network: str | None = None
    ip: str | None = None
    mode: Literal["user", "network"] | None = None
    hostfwd: list[str] = Field(default_factory=list)


class VMDef(_Strict):
    """A VM (``count`` > 1: that many, NAME-1 … NAME-N, fixed addresses counting up)."""

    image: str | None = None
    cpus: int = Field(1, ge=1, le=255)
    memory: str | int = "256M"
    machine: Literal["q35", "microvm", "virt"] | None = None
    arch: Literal["x86_64", "aarch64"] | None = None
    cmdline: str | None = None
    user_data: str | None = Field(None, description="cloud-init user-data (the text)")
    ssh_keys: list[str] | None = Field(None, description="login keys: by cloud-init, or "
                                       "written by the guest agent on a warm start")
    hostname: str | None = None
    disks: list[str] = Field(default_factory=list, description="named disks of the stack")
    nics: list[NicDef] | None = None
    from_snapshot: str | None = Field(None, description="VM:SNAPSHOT, a warm start")
    count: int = Field(1, ge=1, le=MAX_COUNT)
    start: bool = True
    provision: list[str] = Field(default_factory=list,
                                 description="shell commands the guest agent runs, in "
                                             "order, each time the stack starts the VM "
                                             "(write them to run twice safely)")
    owner: str = "default"
    priority: int = 0
    expected_runtime: str | float | None = None
    timeslice: bool = False
    cpu_weight: int | None = None
    cpu_max: str | float | None = None
    pin: list[int] | None = None


class StackFile(_Strict):
    """A stack: the resources ``corral apply`` makes and keeps as written."""

    model_config = ConfigDict(extra="forbid", title="Corral stack")
    name: str | None = Field(None, pattern=NAME, description="default: the file's name")
    networks: dict[str, NetworkDef] = Field(default_factory=dict)
    routers: dict[str, RouterDef] = Field(default_factory=dict)
    disks: dict[str, DiskDef] = Field(default_factory=dict)
    vms: dict[str, VMDef] = Field(default_factory=dict)
    snapshots: dict[str, SnapshotDef] = Field(default_factory=dict)
    firewall: list[RuleDef] = Field(default_factory=list)


class Loaded:
    """A parsed stack file and the line of each of its paths."""

    def __init__(self, file: str, stack: StackFile, lines: dict[Path, int]) -> None:
        self.file = file
        self.stack = stack
        self.lines = lines

    def line(self, path: Path) -> int:
        """The line of ``path`` (of its nearest parent that has one)."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return 1

    def error(self, path: Path, message: str) -> InvalidSpec:
        return stack_error(self.file, self.line(path), path, message)


def dotted(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(file)"


def stack_error(file: str, line: int, path: Path, message: str) -> InvalidSpec:
    err = InvalidSpec(dotted(path), message)
    err.message = f"{file}:{line}: {dotted(path)}: {message}"
    err.args = (err.message,)
    return err


def schema() -> dict[str, Any]:
    """The JSON Schema of a stack file."""
    out = StackFile.model_json_schema()
    out["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return out


def _walk(node: Any, path: Path, lines: dict[Path, int], file: str, seen: set[int]) -> None:
    """Record the line of every path under ``node``. A node met again through an alias is
    not walked twice: nested aliases would make that exponential."""
    import yaml

    lines.setdefault(path, node.start_mark.line + 1)  # a key's line, if it has one
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[Any, int] = {}
        for key, value in node.value:
            if key.tag == "tag:yaml.org,2002:merge":
                continue
            name = key.value if isinstance(key, yaml.ScalarNode) else str(key.start_mark)
            if name in first:
                raise stack_error(file, key.start_mark.line + 1, (*path, name),
                                  f"given twice (first on line {first[name]})")
            first[name] = key.start_mark.line + 1
            lines[(*path, name)] = key.start_mark.line + 1
            _walk(value, (*path, name), lines, file, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), lines, file, seen)


def load(text: str, file: str) -> Loaded:
    """Parse the stack file ``text`` (named ``file`` in errors).

    :raises InvalidSpec: not YAML, a duplicate key, or a field of the wrong shape; the
        message starts with ``FILE:LINE: FIELD:``.
    """
    import yaml

    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)  # refuses control characters at once
        node = loader.get_single_node()
        if node is None:
            raise stack_error(file, 1, (), "the file is empty")
        lines: dict[Path, int] = {}
        _walk(node, (), lines, file, set())
        data = loader.construct_document(node)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        line = mark.line + 1 if mark else text.count("\n", 0, getattr(err, "position", 0)) + 1
        reason = getattr(err, "problem", None) or getattr(err, "reason", None) or str(err)
        raise stack_error(file, line, (), f"not YAML: {reason}") from err
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(data, dict):
        raise stack_error(file, 1, (), "a stack file is a mapping (networks:, vms: …)")
    try:
        stack = StackFile.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        path: Path = tuple(first["loc"])
        more = len(err.errors()) - 1
        tail = f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
        loaded = Loaded(file, StackFile.model_construct(), lines)
        raise loaded.error(path, complaints.reason(first) + tail) from err
    return Loaded(file, stack, lines)
