"""Records of what the network layer made, so that nothing is made twice or left behind.

Every Linux object made for a network, a router, a router's leg or a VM's NIC is described by
a :class:`Record`: its kind, its name, its owner (the unit whose removal takes it away:
``network:lan``, ``router:gw``, ``router:gw/lan``, ``vm:web``), the namespace it lives in and
one kind-specific detail. Records are plain values (``to_dict``/``from_dict``) for the daemon
to store with the owner.

The life of a unit, as the daemon drives it:

* **make** - an ``ensure_*`` function makes what is missing and returns :class:`Made`: every
  record of the unit (store them) and the ones it had to make now. Inside, a :class:`Build`
  notes each part; if a step fails, it removes the parts this call made, newest first, and
  re-raises: creation is all or nothing.
* **restart** - call the same ``ensure_*`` functions with the stored plans: what survived is
  found again (the ``new`` records say what had to be rebuilt), nothing is made twice.
* **remove** - :func:`remove` with the stored records removes exactly those objects, newest
  first; an object already gone is fine.
* **collect garbage** - :func:`collect_garbage` removes every object that carries one of
  Corral's prefixes but no record: leftovers of a crash half-way through.

:class:`Host` says where "the host" is: the machine itself (``netns=None``), or a namespace
standing in for one (the tests; later, several hosts on one machine).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from types import TracebackType
from typing import Literal, cast, get_args

from corral.errors import CorralError, InvalidSpec
from corral.host.network import dnsmasq, links, names
from corral.host.network.nft import Nft

log = logging.getLogger(__name__)

RecordKind = Literal["netns", "bridge", "tap", "veth", "nft_table", "dnsmasq", "route",
                     "vxlan"]


@dataclass(frozen=True)
class Host:
    """Where host-side objects live (``netns`` None: this machine) and where the files of
    its dnsmasqs go (``run_dir/<network namespace>/``)."""

    run_dir: Path
    netns: str | None = None
    underlay: IPv4Address | None = None  # where VXLAN ports bind (a host of a cluster)


@dataclass(frozen=True)
class Record:
    """One object the network layer made.

    ``detail`` is the table family for ``nft_table``, the files' directory for ``dnsmasq``
    and the gateway for ``route`` (whose ``name`` is the destination subnet).
    """

    kind: RecordKind
    name: str
    owner: str
    netns: str | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, str | None]) -> Record:
        """:raises InvalidSpec: (field ``kind``) for a kind this version does not know."""
        kind = data.get("kind")
        if kind not in get_args(RecordKind):
            raise InvalidSpec("kind", f"unknown network record kind '{kind}'")
        return cls(kind=cast(RecordKind, kind), name=str(data["name"]), owner=str(data["owner"]),
                   netns=data.get("netns"), detail=str(data.get("detail") or ""))


@dataclass(frozen=True)
class Made:
    records: tuple[Record, ...]  # every part of the unit: store these
    new: tuple[Record, ...]  # the parts this call made (after a restart: what was missing)


@dataclass
class Build:
    """Notes the parts of one unit as they are made; removes the new ones if a step fails."""

    owner: str
    records: list[Record] = field(default_factory=list)
    new: list[Record] = field(default_factory=list)

    def add(self, kind: RecordKind, name: str, netns: str | None, made: bool,
            detail: str = "") -> Record:
        record = Record(kind, name, self.owner, netns, detail)
        self.records.append(record)
        if made:
            self.new.append(record)
        return record

    def result(self) -> Made:
        return Made(tuple(self.records), tuple(self.new))

    def __enter__(self) -> Build:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        if err is None:
            if self.new:
                log.info("%s: made %s", self.owner, ", ".join(r.name for r in self.new))
            return
        for record in reversed(self.new):
            try:
                remove_one(record)
            except CorralError as undo:
                err.add_note(f"rolling back, could not remove {record.kind} {record.name}: "
                             f"{undo}")


def remove(records: Iterable[Record]) -> None:
    """Remove the objects of ``records``, newest first; absent ones are fine.

    :raises CorralError: the first failure, after trying every record.
    """
    failures: list[CorralError] = []
    for record in reversed(list(records)):
        try:
            remove_one(record)
        except CorralError as err:
            failures.append(err)
    if failures:
        for extra in failures[1:]:
            failures[0].add_note(str(extra))
        raise failures[0]


def remove_one(record: Record) -> None:
    """Remove one object; fine if it is gone, also when its namespace is."""
    if record.kind == "netns":
        links.delete_netns(record.name)
    elif record.kind == "dnsmasq":  # a process keeps its namespace alive: stop it in any case
        dnsmasq.stop(Path(record.detail))
    elif record.netns is not None and not links.netns_exists(record.netns):
        return  # it went with its namespace
    elif record.kind in ("bridge", "tap", "veth", "vxlan"):
        links.delete_link(record.name, record.netns)
    elif record.kind == "nft_table":
        Nft(record.netns).delete_table(record.detail, record.name)
    elif record.kind == "route":
        links.delete_route(IPv4Network(record.name), IPv4Address(record.detail), record.netns)


def collect_garbage(host: Host, keep: Iterable[Record]) -> list[Record]:
    """Remove every object with one of Corral's prefixes that no record in ``keep`` names,
    and return what was found (a failure to remove one is logged, and the rest goes on).

    Links and nft tables are looked for in ``host``, dnsmasqs among those whose files are
    under ``host.run_dir``. Named namespaces are shared by every host of the machine: pass the
    records of all of them.
    """
    keep = list(keep)
    kept = {(r.kind, r.name, r.netns) for r in keep}
    dirs = {Path(r.detail) for r in keep if r.kind == "dnsmasq"}
    garbage: list[Record] = []
    for pid, dir in dnsmasq.find_all().items():
        if dir not in dirs and dir.is_relative_to(host.run_dir):
            garbage.append(Record("dnsmasq", str(pid), "garbage", None, str(dir)))
    for family, table in Nft(host.netns).tables():
        if names.kind_of(table) in names.NETNS_KINDS \
                and ("nft_table", table, host.netns) not in kept:
            garbage.append(Record("nft_table", table, "garbage", host.netns, family))
    for kind, rkind in _LINK_RECORDS.items():
        for link in links.link_names(names.PREFIXES[kind], host.netns):
            if (rkind, link, host.netns) not in kept:
                garbage.append(Record(rkind, link, "garbage", host.netns))
    for kind in names.NETNS_KINDS:
        for ns in links.netns_list(names.PREFIXES[kind]):
            if ("netns", ns, None) not in kept:
                garbage.append(Record("netns", ns, "garbage"))
    for record in garbage:
        try:
            if record.kind == "dnsmasq":
                dnsmasq.terminate(int(record.name))
            remove_one(record)
        except CorralError as err:
            log.warning("could not remove stray %s %s: %s", record.kind, record.name, err)
    return garbage


_LINK_RECORDS: dict[names.Kind, RecordKind] = {
    "bridge": "bridge", "tap": "tap", "leg": "veth", "uplink": "veth", "dhcp": "veth",
    "vxlan": "vxlan"}
