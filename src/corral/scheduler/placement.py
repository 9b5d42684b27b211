"""Placement: on which host a VM goes, and why every other host was turned down.

Placement runs the two steps of OpenStack Nova's filter scheduler over plain data:

1. **Filters** turn hosts down, each with a reason:

   * *host*: the host the request names, if it names one (``--host``);
   * *labels*: the host must carry every ``key=value`` label the request names;
   * *anti-affinity*: the host must hold no VM of the request's anti-affinity group;
   * *affinity*: once a VM of the request's affinity group is placed, the others follow it to
     the hosts that hold the group;
   * *capacity*: vCPUs, memory and disk must fit in what is free under the host's overcommit
     ratios (see :mod:`corral.scheduler.resources`).

2. A **weigher** picks among the hosts that pass: ``spread`` takes the one with the most free
   memory (Nova's RAM weigher: load spreads out, every VM has room to grow); ``pack`` takes the
   one with the least free memory that still fits (best fit: hosts fill one by one, empty ones
   stay free for large VMs or can be switched off). Memory is the resource that is not
   overcommitted, so it is the one that binds. Ties go to the host listed first.

The fast path never looks at every host. Hosts sit in lists sorted by the weigher's key, one
per CPU band and class of free disk: band b lists the hosts with at least 2ᵇ vCPUs free, so a
host whose CPUs are taken drops out of the lists that larger requests search, however much
memory it has left; class c the hosts with less than 2ᶜ bytes of disk free, so a host whose
disk is full is not visited by every request that needs disk (``spread`` would otherwise keep
large-memory, small-disk hosts at the top of its list). A request searches the classes of
its band that can hold its disk; in each it jumps with a binary search to where memory starts
to fit (``pack``) or scans from the most free downwards until memory stops fitting
(``spread``), takes the first host that passes the other filters (labels, groups, CPU,
disk), and the best of the classes' firsts wins: the host one sorted list would give. Usage is
kept in flat lists of integers, not per-host objects. Placing 10,000 VMs on 1,000 hosts takes
well under a second (``bench/placement.py``).

``place(request, explain=True)`` takes the slow, obvious path instead: it filters every host
and weighs all that pass, and returns the reason for each host it turned down. It is what a
user sees when nothing fits, and it is the reference the fast path is tested against.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from corral.errors import AlreadyExists, InvalidSpec, NotFound
from corral.scheduler.resources import Overcommit, Resources, Shortage, capacity_message

Weigher = Literal["spread", "pack"]


@dataclass(frozen=True)
class Host:
    """A host as placement sees it: totals, labels, ratios, what is in use, which groups."""

    name: str
    cpus: int
    memory: int
    disk: int
    labels: Mapping[str, str] = field(default_factory=dict)
    ratios: Overcommit = field(default_factory=Overcommit)
    used: Resources = field(default_factory=Resources)
    groups: Mapping[str, int] = field(default_factory=dict)  # group → its VMs on this host


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    """A VM to place: its size, the host labels it needs, the groups it belongs to."""

    id: str
    cpus: int
    memory: int
    disk: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    affinity: str | None = None
    anti_affinity: str | None = None
    host: str | None = None  # this host only (``--host NAME``)


@dataclass(frozen=True, slots=True)
class Placement:
    """The chosen host (``None``: none fits) and the reason each turned-down host gave.

    ``rejected`` lists every host when nothing fits or when asked to explain; otherwise it is
    empty, because the fast path does not visit every host.
    """

    request: str
    host: str | None
    rejected: Mapping[str, str]


class Placer:
    """Places requests one after another on a fixed set of hosts, keeping their usage.

    :raises InvalidSpec: for an unknown weigher, or two hosts of the same name.
    """

    def __init__(self, hosts: Sequence[Host], weigher: Weigher = "spread") -> None:
        if weigher not in ("spread", "pack"):
            raise InvalidSpec("weigher", f"'{weigher}' is not a weigher; use spread or pack")
        self.weigher = weigher
        self._names = [h.name for h in hosts]
        self._by_name = {name: i for i, name in enumerate(self._names)}
        if len(self._by_name) != len(hosts):
            raise InvalidSpec("hosts", "two hosts have the same name")
        caps = [h.ratios.apply(Resources(h.cpus, h.memory, h.disk)) for h in hosts]
        self._cap_cpu = [c.cpus for c in caps]
        self._cap_mem = [c.memory for c in caps]
        self._cap_disk = [c.disk for c in caps]
        self._used_cpu = [h.used.cpus for h in hosts]
        self._used_mem = [h.used.memory for h in hosts]
        self._used_disk = [h.used.disk for h in hosts]
        self._labels = [dict(h.labels) for h in hosts]
        self._members: dict[str, dict[int, int]] = {}
        for i, h in enumerate(hosts):
            for group, count in h.groups.items():
                if count > 0:
                    self._members.setdefault(group, {})[i] = count
        self._placed: dict[str, tuple[int, PlacementRequest]] = {}
        # per CPU band, per disk class: (weight, host) sorted
        self._bands: list[dict[int, list[tuple[int, int]]]] = []
        for i in range(len(hosts)):
            for band in range(self._band_count(i)):
                while len(self._bands) <= band:
                    self._bands.append({})
                self._bands[band].setdefault(self._disk_class(i), []).append(
                    (self._weight(i), i))
        for classes in self._bands:
            for entries in classes.values():
                entries.sort()

    def free(self, host: str) -> Resources:
        """What is free on ``host`` under its ratios (negative when overcommitted beyond them).

        :raises NotFound: for an unknown host.
        """
        i = self._host(host)
        return Resources(self._cap_cpu[i] - self._used_cpu[i],
                         self._cap_mem[i] - self._used_mem[i],
                         self._cap_disk[i] - self._used_disk[i])

    def host_of(self, request_id: str) -> str:
        """:raises NotFound: unless ``request_id`` is placed."""
        try:
            return self._names[self._placed[request_id][0]]
        except KeyError:
            raise NotFound(f"request '{request_id}' is not placed") from None

    def place(self, request: PlacementRequest, *, explain: bool = False,
              reasons: bool = True) -> Placement:
        """Choose a host for ``request`` and account it there. When nothing fits, each
        host's reason is given unless ``reasons`` is false (a queue or a simulator that only
        needs to know it waits: the reasons cost a visit of every host).

        :raises InvalidSpec: when the request asks for no CPU or a negative size.
        :raises AlreadyExists: when a request of that id is already placed.
        """
        if request.cpus < 1 or request.memory < 0 or request.disk < 0:
            raise InvalidSpec("request", f"'{request.id}' needs at least 1 CPU and sizes of 0 "
                                         "or more")
        if request.id in self._placed:
            raise AlreadyExists(f"request '{request.id}' is already placed")
        rejected: dict[str, str] = {}
        if explain:
            chosen, rejected = self._scan(request)
        else:
            chosen = self._find(request)
            if chosen is None and reasons:
                rejected = self._scan(request)[1]
        if chosen is None:
            return Placement(request.id, None, rejected)
        self._account(chosen, request, +1)
        self._placed[request.id] = (chosen, request)
        return Placement(request.id, self._names[chosen], rejected)

    def assign(self, request: PlacementRequest, host: str) -> None:
        """Account ``request`` on ``host`` without choosing: a placement decided before this
        placer was built, whose VM the host's usage does not count yet.

        :raises NotFound: for an unknown host.
        :raises AlreadyExists: when a request of that id is already placed.
        """
        i = self._host(host)
        if request.id in self._placed:
            raise AlreadyExists(f"request '{request.id}' is already placed")
        self._account(i, request, +1)
        self._placed[request.id] = (i, request)

    def release(self, request_id: str) -> None:
        """Give back what a placed request held on its host.

        :raises NotFound: unless ``request_id`` is placed.
        """
        try:
            i, request = self._placed.pop(request_id)
        except KeyError:
            raise NotFound(f"request '{request_id}' is not placed") from None
        self._account(i, request, -1)

    def reason(self, host: str, request: PlacementRequest) -> str | None:
        """Why ``host`` cannot take ``request`` now; ``None`` when it can.

        :raises NotFound: for an unknown host.
        """
        return self._reason(self._host(host), request)

    def _host(self, name: str) -> int:
        try:
            return self._by_name[name]
        except KeyError:
            raise NotFound(f"no host '{name}'") from None

    def _band_count(self, i: int) -> int:
        """Host ``i`` is listed in CPU bands 0 … n−1: band b holds the hosts with 2ᵇ or more
        vCPUs free, so hosts whose CPUs are full stay out of the lists a request searches."""
        return max(self._cap_cpu[i] - self._used_cpu[i], 0).bit_length()

    def _disk_class(self, i: int) -> int:
        """Within a CPU band hosts are listed by free disk, class c holding those with less
        than 2ᶜ bytes free (and at least 2ᶜ⁻¹): a request searches only the classes that can
        hold its disk, so hosts whose disk is full are not visited over and over."""
        return max(self._cap_disk[i] - self._used_disk[i], 0).bit_length()

    def _weight(self, i: int) -> int:
        free = self._cap_mem[i] - self._used_mem[i]
        return -free if self.weigher == "spread" else free

    def _reason(self, i: int, r: PlacementRequest) -> str | None:
        if r.host is not None and self._names[i] != r.host:
            return f"not the host asked for ({r.host})"
        labels = self._labels[i]
        for key, value in r.labels.items():
            if key not in labels:
                return f"missing label {key}={value}"
            if labels[key] != value:
                return f"label {key}={labels[key]}, needs {key}={value}"
        if r.anti_affinity is not None and i in self._members.get(r.anti_affinity, ()):
            return f"anti-affinity: group '{r.anti_affinity}' already has a VM here"
        together = self._members.get(r.affinity) if r.affinity is not None else None
        if together and i not in together:
            return f"affinity: group '{r.affinity}' runs on other hosts"
        if (self._used_cpu[i] + r.cpus <= self._cap_cpu[i]
                and self._used_mem[i] + r.memory <= self._cap_mem[i]
                and self._used_disk[i] + r.disk <= self._cap_disk[i]):
            return None
        return capacity_message(
            Shortage(kind, need, max(cap - used, 0)) for kind, need, cap, used in (
                ("cpus", r.cpus, self._cap_cpu[i], self._used_cpu[i]),
                ("memory", r.memory, self._cap_mem[i], self._used_mem[i]),
                ("disk", r.disk, self._cap_disk[i], self._used_disk[i])) if used + need > cap)

    def _scan(self, r: PlacementRequest) -> tuple[int | None, dict[str, str]]:
        rejected: dict[str, str] = {}
        best: tuple[int, int] | None = None
        for i, name in enumerate(self._names):
            why = self._reason(i, r)
            if why is not None:
                rejected[name] = why
            elif best is None or (self._weight(i), i) < best:
                best = (self._weight(i), i)
        return (None if best is None else best[1]), rejected

    def _fits_rest(self, i: int, r: PlacementRequest) -> bool:
        """Every filter but memory, which the search in the sorted list has already applied."""
        if (self._used_cpu[i] + r.cpus > self._cap_cpu[i]
                or self._used_disk[i] + r.disk > self._cap_disk[i]):
            return False
        if r.anti_affinity is not None and i in self._members.get(r.anti_affinity, ()):
            return False
        labels = self._labels[i]
        return all(labels.get(k) == v for k, v in r.labels.items())

    def _find(self, r: PlacementRequest) -> int | None:
        if r.host is not None:
            i = self._by_name.get(r.host)
            return i if i is not None and self._reason(i, r) is None else None
        together = self._members.get(r.affinity) if r.affinity is not None else None
        if together:
            ok = [(self._weight(i), i) for i in together
                  if self._used_mem[i] + r.memory <= self._cap_mem[i] and self._fits_rest(i, r)]
            return min(ok)[1] if ok else None
        band = r.cpus.bit_length() - 1  # hosts with at least 2^band ≤ r.cpus free
        classes = self._bands[band] if band < len(self._bands) else {}
        lowest = r.disk.bit_length()  # lower classes have less than the disk free
        best: tuple[int, int] | None = None
        for disk_class, pool in classes.items():
            if disk_class < lowest:
                continue
            if self.weigher == "spread":
                # sorted by -free: every entry up to -free > -memory has room for the memory
                stop = bisect.bisect_right(pool, (-r.memory, len(self._names)))
                candidates = range(stop)
            else:
                candidates = range(bisect.bisect_left(pool, (r.memory, -1)), len(pool))
            for j in candidates:  # the first that fits is this class's best
                if best is not None and pool[j] > best:
                    break
                if self._fits_rest(pool[j][1], r):
                    best = pool[j]
                    break
        return None if best is None else best[1]

    def _account(self, i: int, r: PlacementRequest, sign: int) -> None:
        old, old_bands, old_class = self._weight(i), self._band_count(i), self._disk_class(i)
        self._used_cpu[i] += sign * r.cpus
        self._used_mem[i] += sign * r.memory
        self._used_disk[i] += sign * r.disk
        new, new_bands, new_class = self._weight(i), self._band_count(i), self._disk_class(i)
        for band in range(old_bands):
            entries = self._bands[band][old_class]
            del entries[bisect.bisect_left(entries, (old, i))]
        for band in range(new_bands):
            while len(self._bands) <= band:
                self._bands.append({})
            bisect.insort(self._bands[band].setdefault(new_class, []), (new, i))
        for group in {g for g in (r.affinity, r.anti_affinity) if g is not None}:
            members = self._members.setdefault(group, {})
            members[i] = members.get(i, 0) + sign
            if members[i] <= 0:
                del members[i]
