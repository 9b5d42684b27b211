"""The daemon's network state: the stored networks, routers and records, the one lock for
changes to the host, and where the host's parts go (see :mod:`.networks` for how a change
is made and undone). Shared by the network, router and NIC use cases.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from corral.errors import CommandFailed, NeedsRoot, NotFound
from corral.host.network import Host, Port, RouterPlan, counters, update_network
from corral.host.network.nft import Firewall
from corral.service import access
from corral.store.networks import NetStore, NetworkRow

if TYPE_CHECKING:
    from corral.service.netoverlay import Overlay
    from corral.service.runtime import VMRuntime

T = TypeVar("T")
USER_MODE_HINT = "without root, VMs get user-mode networking: --nic user[,hostfwd=tcp:8022-:22]"


def require_root(action: str) -> None:
    """:raises NeedsRoot: unless the daemon runs as root."""
    if os.geteuid() != 0:
        raise NeedsRoot(f"cannot {action}: that needs a daemon running as root (this one runs "
                        f"as uid {os.geteuid()}); {USER_MODE_HINT}")


def reap_dnsmasq_zombies() -> None:
    """Reap what dnsmasq leaves behind when it daemonizes: its first child exits once the
    daemon runs, and since the Corral daemon is a child subreaper it becomes our zombie.
    Only zombies named dnsmasq are reaped: QEMU's exits belong to their pidfd watchers."""
    me = str(os.getpid())
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text() if proc.name.isdigit() else ""
        except OSError:
            continue
        comm, _, rest = stat.partition(" (")[2].rpartition(") ")
        if comm == "dnsmasq" and rest.split()[:2] == ["Z", me]:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(int(proc.name), os.WNOHANG)


class Networks:
    """The daemon's networks: the stored state, the one lock for changes to the host, and
    where the host's parts go. The VMs' records come from the runtime."""

    def __init__(self, rt: VMRuntime) -> None:
        self.rt = rt
        self.lock = asyncio.Lock()
        self._db: NetStore | None = None
        self.overlay: Overlay | None = None  # the cluster's networks, in a cluster

    @property
    def db(self) -> NetStore:
        if self._db is None:
            self._db = NetStore(self.rt.db)
        return self._db

    @property
    def host(self) -> Host:
        underlay = self.overlay.underlay if self.overlay is not None else None
        return Host(run_dir=self.rt.paths.networks, underlay=underlay)

    @staticmethod
    async def call(fn: Callable[..., T], *args: Any) -> T:
        """Run a host-side library call in a thread (netlink, nft and dnsmasq block)."""
        return await asyncio.to_thread(fn, *args)

    def network(self, name: str) -> NetworkRow:
        """:raises NotFound: no network of that name."""
        row = self.db.networks.get(name)
        if row is None or not access.visible(self.db.project_of("network", name)):
            raise NotFound(f"no network named '{name}'; see 'corral network list'")
        return row

    def router(self, name: str) -> RouterPlan:
        """:raises NotFound: no router of that name."""
        plan = self.db.routers.get(name)
        if plan is None or not access.visible(self.db.project_of("router", name)):
            raise NotFound(f"no router named '{name}'; see 'corral router list'")
        return plan

    def taken(self) -> set[str]:
        """Every Linux name recorded or planned: new names must avoid them."""
        names = {r.name for r in self.db.records()}
        for row in self.db.networks.values():
            names |= {row.plan.bridge, row.plan.netns, row.plan.veth}
        for plan in self.db.routers.values():
            names |= {plan.netns, *([plan.uplink] if plan.uplink else [])}
        names |= {leg.veth for leg in self.db.legs.values()}
        return names | {n.ifname for r in self.rt.db.list_vms() for n in r.spec.nics if n.ifname}

    def ports(self, network: str) -> list[Port]:
        """The ports of every NIC planned on ``network``, oldest VM first. The first NIC of
        each VM carries its name in DNS; an address or tap already taken by an older VM (a
        copy not yet planned again) is left out. On a network that spans hosts, the ports
        of VMs on other hosts follow (as the cluster's reservations say)."""
        out: list[Port] = []
        for rec in self.rt.db.list_vms():
            named = False
            for nic in rec.spec.nics:
                if nic.network != network or nic.planned_for != rec.name \
                        or not nic.ip or not nic.ifname:
                    continue
                if any(p.ip == nic.ip or p.ifname == nic.ifname for p in out):
                    continue
                out.append(Port(network, rec.name, nic.ifname, nic.mac, nic.ip,
                                None if named else rec.name))
                named = True
        out += [p for p in self.remote_ports(network)
                if not any(q.ip == p.ip or q.mac == p.mac for q in out)]
        return out

    def remote_ports(self, network: str) -> list[Port]:
        """The ports of ``network`` whose VMs are on other hosts of the cluster."""
        if self.overlay is None or network not in self.overlay.networks:
            return []
        here = {r.name for r in self.rt.db.list_vms()}
        return [r.port for r in self.overlay.ports(network) if r.port.vm not in here]

    def firewall(self, network: str) -> Firewall:
        """The network's default policy with its own rules and those of its VMs."""
        row = self.network(network)
        vms = {p.vm for p in self.ports(network)}
        rules = tuple(r.rule for r in self.db.rules.values()
                      if r.network == network or (r.network is None and r.rule.vm in vms))
        return Firewall(row.policy, rules)

    async def apply(self, network: str) -> None:
        """Bring the network's DHCP entries, anti-spoofing and firewall in line with the
        store. Call it holding :attr:`lock`."""
        plan = self.network(network).plan
        await self.call(update_network, self.host, plan, self.ports(network),
                        self.firewall(network))


def tap_counters(ifname: str) -> dict[str, int] | None:
    """A tap's counters as its guest sees them (the tap's rx is what the guest sent), or
    None while the tap does not exist."""
    try:
        c = counters(ifname)
    except CommandFailed:
        return None
    return {"rx_bytes": c.tx_bytes, "tx_bytes": c.rx_bytes, "rx_packets": c.tx_packets,
            "tx_packets": c.rx_packets, "rx_dropped": c.tx_dropped, "tx_dropped": c.rx_dropped}


def taps_counters(taps: list[str]) -> list[dict[str, int] | None]:
    return [tap_counters(tap) for tap in taps]
