"""Bridges, taps, veths, addresses, routes and namespaces: the Linux parts of a network.

Links, addresses and routes go through netlink with pyroute2; namespaces are added and
deleted with ``ip netns`` (through the runner), which also sets up the shared mount of
``/run/netns`` that other tools expect.

Every netlink call runs in a short-lived thread that first enters the target namespace:
``setns`` changes the namespace of the calling thread only, so the daemon itself never moves.
This gives three things at once:

* the same functions work on the host (``netns=None``), inside a router, and inside a
  namespace that stands in for a host in the tests;
* pyroute2's synchronous ``IPRoute`` never meets a running asyncio loop (it would raise
  ``RuntimeError: This event loop is already running``), so these functions may be called
  from the daemon's loop (each takes about a millisecond; wrap batches in
  ``asyncio.to_thread``);
* pyroute2 never forks a helper process to reach a namespace, as its ``netns=`` argument
  would.

Functions that make something return True when they made it and False when it was already
there, after bringing it to the wanted state either way: callers can run them again after a
restart, and roll back only what they made. Functions that delete accept an absent object.
A name Linux would refuse (over 15 characters, say) raises :class:`~corral.errors.InvalidSpec`
naming the kind before anything is made. A netlink failure raises
:class:`~corral.errors.CommandFailed` whose ``argv`` describes the request
(``["netlink", "link", "add", NAME]``) and whose ``returncode`` is the errno.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any, TypeVar

from corral.errors import CommandFailed
from corral.host.network.names import check
from corral.host.runner import run

NETNS_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

T = TypeVar("T")


@dataclass(frozen=True)
class Counters:
    """What crossed an interface, as the interface saw it (rx: received by it)."""

    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int
    rx_dropped: int
    tx_dropped: int


def run_in(netns: str | None, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a new thread inside ``netns`` (None: the daemon's own) and return its
    result or raise its exception.

    :raises CommandFailed: when the namespace cannot be entered.
    """
    outcome: list[tuple[bool, Any]] = []

    def target() -> None:
        try:
            if netns is not None:
                _enter(netns)
            outcome.append((True, fn()))
        except BaseException as err:  # handed to the caller's thread below
            outcome.append((False, err))

    thread = threading.Thread(target=target, name=f"netns:{netns or 'host'}")
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    result: T = value
    return result


def _enter(netns: str) -> None:
    try:
        fd = os.open(NETNS_DIR / netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise CommandFailed(["setns", netns], err.errno or 1, err.strerror or "",
                            what=f"cannot enter network namespace {netns}") from err
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise CommandFailed(["setns", netns], code, os.strerror(code),
                                what=f"cannot enter network namespace {netns}")
    finally:
        os.close(fd)


@functools.cache
def _pyroute2() -> Any:
    import pyroute2  # type: ignore[import-untyped]  # 0.25 s: paid by the first netlink call

    return pyroute2


def _netlink(netns: str | None, argv: list[str], fn: Callable[[Any], T]) -> T:
    pyroute2 = _pyroute2()

    def call() -> T:
        with pyroute2.IPRoute() as ipr:
            return fn(ipr)

    try:
        return run_in(netns, call)
    except pyroute2.NetlinkError as err:
        where = f" in {netns}" if netns else ""
        reason = str(err.args[1]) if len(err.args) > 1 else os.strerror(err.code)
        raise CommandFailed(["netlink", *argv], err.code, reason,
                            what=f"netlink {' '.join(argv)}{where} failed") from err


def _index(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


# -- namespaces ------------------------------------------------------------------------------

def netns_exists(name: str) -> bool:
    """Whether ``/run/netns/<name>`` names a namespace."""
    return (NETNS_DIR / name).exists()


def netns_list(prefix: str) -> list[str]:
    """Names of the named network namespaces that start with ``prefix``."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


def add_netns(name: str) -> bool:
    """Make namespace ``name`` with its loopback up."""
    created = not netns_exists(check("netns", name))
    if created:
        run(["ip", "netns", "add", name], what=f"cannot create network namespace {name}")
    try:
        _netlink(name, ["link", "set", "lo", "up"],
                 lambda ipr: ipr.link("set", index=_index(ipr, "lo"), state="up"))
    except CommandFailed:
        if created:
            delete_netns(name)
        raise
    return created


def delete_netns(name: str) -> None:
    """Delete namespace ``name`` if it exists (its interfaces go with it)."""
    if netns_exists(name):
        run(["ip", "netns", "delete", name], what=f"cannot delete network namespace {name}")


def write_sysctl(netns: str | None, key: str, value: str) -> None:
    """Write ``value`` to ``/proc/sys/<key>`` (slashes, not dots) as seen from ``netns``:
    the ``net`` keys belong to the namespace of the writing thread."""
    path = Path("/proc/sys") / key
    run_in(netns, lambda: path.write_text(value))


# -- links -----------------------------------------------------------------------------------

def link_exists(name: str, netns: str | None = None) -> bool:
    """Whether ``netns`` has an interface ``name``."""
    return _netlink(netns, ["link", "show", name], lambda ipr: _index(ipr, name) is not None)


def link_names(prefix: str, netns: str | None = None) -> list[str]:
    """Names of the interfaces in ``netns`` that start with ``prefix``."""
    def names(ipr: Any) -> list[str]:
        return sorted(n for link in ipr.get_links()
                      if (n := str(link.get_attr("IFLA_IFNAME"))).startswith(prefix))
    return _netlink(netns, ["link", "show"], names)


def delete_link(name: str, netns: str | None = None) -> None:
    """Delete interface ``name``; deleting one end of a veth deletes both."""
    def delete(ipr: Any) -> None:
        index = _index(ipr, name)
        if index is not None:
            try:
                ipr.link("del", index=index)
            except _pyroute2().NetlinkError as err:
                if err.code != errno.ENODEV:  # the peer's deletion took it meanwhile
                    raise
    _netlink(netns, ["link", "del", name], delete)


def add_bridge(name: str, netns: str | None = None) -> bool:
    """A bridge without STP and without forwarding delay, up: ports forward at once."""
    check("bridge", name)

    def make(ipr: Any) -> bool:
        created = _index(ipr, name) is None
        if created:
            ipr.link("add", ifname=name, kind="bridge", br_stp_state=0, br_forward_delay=0)
        ipr.link("set", index=_index(ipr, name), state="up")
        return created
    return _netlink(netns, ["link", "add", name, "type", "bridge"], make)


def add_tap(name: str, bridge: str, netns: str | None = None, uid: int | None = None) -> bool:
    """A persistent tap for QEMU (``vnet_hdr``, no packet info), owned by ``uid`` when
    given so that an unprivileged QEMU may open it, attached to ``bridge`` and up."""
    check("tap", name)

    def make(ipr: Any) -> bool:
        created = _index(ipr, name) is None
        if created:
            extra = {} if uid is None else {"uid": uid}
            ipr.link("add", ifname=name, kind="tuntap", mode="tap",
                     ifr={"no_pi": True, "vnet_hdr": True}, **extra)
        _settle(ipr, name, created, lambda: _attach(ipr, name, bridge))
        return created
    return _netlink(netns, ["tuntap", "add", name, "mode", "tap"], make)


def add_veth(name: str, peer_netns: str, *, netns: str | None = None,
             bridge: str | None = None, peer_address: IPv4Interface | None = None,
             peer_mac: str | None = None) -> bool:
    """A veth pair named ``name`` at both ends: one end in ``netns`` (attached to ``bridge``
    when given), the other in ``peer_netns`` with ``peer_address`` and ``peer_mac``; both up.
    """
    check("veth", name)

    def make(ipr: Any) -> bool:
        created = _index(ipr, name) is None
        if created:
            peer: dict[str, Any] = {"ifname": name, "net_ns_fd": peer_netns}
            if peer_mac is not None:
                peer["address"] = peer_mac
            ipr.link("add", ifname=name, kind="veth", peer=peer)
        _settle(ipr, name, created, lambda: _attach(ipr, name, bridge) if bridge else
                ipr.link("set", index=_index(ipr, name), state="up"))
        return created

    created = _netlink(netns, ["link", "add", name, "type", "veth"], make)
    try:
        _netlink(peer_netns, ["link", "set", name, "up"],
                 lambda ipr: ipr.link("set", index=_index(ipr, name), state="up"))
        if peer_address is not None:
            add_address(name, peer_address, peer_netns)
    except CommandFailed:
        if created:
            delete_link(name, netns)
        raise
    return created


def _settle(ipr: Any, name: str, created: bool, configure: Callable[[], object]) -> None:
    """Configure a link just looked up or made; if it was just made and that fails, delete
    it again so that a failed call leaves nothing behind."""
    try:
        configure()
    except _pyroute2().NetlinkError:
        if created:
            ipr.link("del", index=_index(ipr, name))
        raise


def _attach(ipr: Any, name: str, bridge: str) -> None:
    master = _index(ipr, bridge)
    if master is None:
        raise _pyroute2().NetlinkError(errno.ENODEV, f"no bridge {bridge}")
    ipr.link("set", index=_index(ipr, name), master=master, state="up")


def counters(name: str, netns: str | None = None) -> Counters:
    """The rx/tx counters of interface ``name``."""
    def read(ipr: Any) -> Counters:
        index = _index(ipr, name)
        if index is None:
            raise _pyroute2().NetlinkError(errno.ENODEV)
        stats = ipr.link("get", index=index)[0].get_attr("IFLA_STATS64")
        return Counters(*(int(stats[k]) for k in (
            "rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "rx_dropped", "tx_dropped")))
    return _netlink(netns, ["link", "show", name], read)


# -- addresses and routes --------------------------------------------------------------------

def add_address(name: str, address: IPv4Interface, netns: str | None = None) -> None:
    """Give interface ``name`` the address ``address`` (for instance 10.20.0.1/24)."""
    def add(ipr: Any) -> None:
        index = _index(ipr, name)
        if index is None:
            raise _pyroute2().NetlinkError(errno.ENODEV)
        have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                for a in ipr.get_addr(index=index, family=2)}
        if (str(address.ip), address.network.prefixlen) not in have:
            ipr.addr("add", index=index, address=str(address.ip),
                     prefixlen=address.network.prefixlen)
    _netlink(netns, ["addr", "add", str(address), "dev", name], add)


def add_route(dst: IPv4Network, via: IPv4Address, netns: str | None = None) -> bool:
    """Route ``dst`` (0.0.0.0/0 for the default route) through the gateway ``via``."""
    def add(ipr: Any) -> bool:
        try:
            ipr.route("add", dst=str(dst), gateway=str(via))
        except _pyroute2().NetlinkError as err:
            if err.code != errno.EEXIST:
                raise
            return False
        return True
    return _netlink(netns, ["route", "add", str(dst), "via", str(via)], add)


def delete_route(dst: IPv4Network, via: IPv4Address, netns: str | None = None) -> None:
    """Remove that route if it is there."""
    def delete(ipr: Any) -> None:
        try:
            ipr.route("del", dst=str(dst), gateway=str(via))
        except _pyroute2().NetlinkError as err:
            if err.code not in (errno.ESRCH, errno.ENODEV):
                raise
    _netlink(netns, ["route", "del", str(dst), "via", str(via)], delete)
