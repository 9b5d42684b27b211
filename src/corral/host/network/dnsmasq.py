"""One dnsmasq per network: DHCP leases bound to MACs, and DNS names ``VM.corral``.

dnsmasq runs in the network's own namespace (``corral-nlan``) on the veth it has on the
bridge, with the network's second address. Keeping it out of the host means guests reach no
host service through it, and the host never has an address on a VM network.

Every NIC has a line ``MAC,IP,NAME`` in the *hosts file* (``--dhcp-hostsfile``); dnsmasq
serves static leases only (``--dhcp-range=NET,static``), so an unknown MAC gets nothing. The
VM's first NIC on the network also has a line ``IP NAME.corral NAME`` in the *names file*
(``--addn-hosts``), so guests find each other by name before any lease exists. Rewriting both
and sending SIGHUP is how NICs come and go: dnsmasq re-reads both files then, but it takes
DNS names from the hosts file only when it starts, hence the second file.

``--no-ping`` because dnsmasq's ICMP probe before each offer stalls all DHCP for about 3 s,
and the addresses are Corral's to give anyway. ``--conf-file=/dev/null`` so that no system
configuration leaks in, ``--bind-interfaces`` so that dnsmasqs never share a socket.

dnsmasq is started through the runner and daemonizes: its first process returns once the
daemon is set up, so a bad option or a busy address comes back as
:class:`~corral.errors.CommandFailed` with dnsmasq's own message, and the pid file is written
by then. It survives the daemon and is found again by its pid file, trusted only when that pid
runs dnsmasq with this very ``--pid-file`` on its command line (pids are reused).

dnsmasq drops its privileges to ``nobody`` before it reads its files (at start and on every
SIGHUP), so the directory of its files and every directory above it must be searchable
by others: :func:`start` makes missing ones so (mode 0711) and refuses a directory that is
not. The daemon keeps these files outside its home, which may then be private.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path

from corral.errors import CorralError, Timeout
from corral.host.network import names
from corral.host.network.ipam import NetworkPlan, Port
from corral.host.runner import run

log = logging.getLogger(__name__)
DOMAIN = "corral"
LEASE_TIME = "1h"
MARK = f"--interface={names.PREFIXES['dhcp']}"  # on the command line of every dnsmasq of ours


@dataclass(frozen=True)
class Dnsmasq:
    """The DHCP/DNS server of one network: where it runs and where its files are."""

    netns: str
    interface: str
    subnet: str
    gateway: str
    dir: Path
    mtu: int | None = None  # told to guests (option 26) on a network that spans hosts

    @classmethod
    def of(cls, plan: NetworkPlan, dir: Path) -> Dnsmasq:
        return cls(plan.netns, plan.veth, plan.subnet, plan.gateway, dir, plan.mtu)

    @property
    def pidfile(self) -> Path:
        return self.dir / "dnsmasq.pid"

    @property
    def hostsfile(self) -> Path:
        return self.dir / "hosts"

    @property
    def namesfile(self) -> Path:
        return self.dir / "names"

    def argv(self) -> list[str]:
        net = IPv4Network(self.subnet)
        return [
            "ip", "netns", "exec", self.netns, "dnsmasq", "--conf-file=/dev/null",
            f"--pid-file={self.pidfile}", f"--dhcp-leasefile={self.dir / 'leases'}",
            f"--dhcp-hostsfile={self.hostsfile}", f"--addn-hosts={self.namesfile}",
            f"--log-facility={self.dir / 'log'}",
            f"--interface={self.interface}", "--bind-interfaces", "--except-interface=lo",
            f"--dhcp-range={net.network_address},static,{net.netmask},{LEASE_TIME}",
            f"--dhcp-option=option:router,{self.gateway}", "--dhcp-authoritative",
            "--no-ping", "--no-resolv", "--no-hosts", f"--domain={DOMAIN}",
            f"--local=/{DOMAIN}/",
            *([f"--dhcp-option-force=option:mtu,{self.mtu}"] if self.mtu else []),
        ]


def hosts_text(ports: Iterable[Port]) -> str:
    """The hosts file: one ``MAC,IP[,NAME]`` line per NIC."""
    lines = [",".join([p.mac, p.ip, *([p.hostname] if p.hostname else [])]) for p in ports]
    return "".join(line + "\n" for line in sorted(lines))


def names_text(ports: Iterable[Port]) -> str:
    """The names file: ``IP NAME.corral NAME`` for each NIC that carries its VM's name."""
    lines = [f"{p.ip} {p.hostname}.{DOMAIN} {p.hostname}" for p in ports if p.hostname]
    return "".join(line + "\n" for line in sorted(lines))


def write_hosts(d: Dnsmasq, ports: Iterable[Port]) -> bool:
    """Write the hosts and names files (atomically, readable by dnsmasq); True when either
    changed."""
    ports = list(ports)
    changed = False
    for path, text in ((d.hostsfile, hosts_text(ports)), (d.namesfile, names_text(ports))):
        if path.exists() and path.read_text() == text:
            continue
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.chmod(0o644)
        tmp.replace(path)
        changed = True
    return changed


def start(d: Dnsmasq, ports: Iterable[Port]) -> int:
    """Start the network's dnsmasq unless it runs already; return its pid.

    :raises CorralError: when its directory is not searchable by the user dnsmasq becomes.
    :raises CommandFailed: when dnsmasq refuses to start.
    """
    _make_searchable(d.dir.parent)
    d.dir.mkdir(exist_ok=True)
    d.dir.chmod(0o755)
    write_hosts(d, ports)
    pid = running(d.pidfile)
    if pid is not None:
        return pid
    closed = [p for p in (d.dir, *d.dir.parents) if not os.stat(p).st_mode & 0o001]
    if closed:
        raise CorralError(f"dnsmasq runs as nobody and cannot reach {d.dir}: "
                          f"{closed[-1]} is not searchable by others (chmod o+x)")
    d.pidfile.unlink(missing_ok=True)  # a stale one would name another process
    run(d.argv(), timeout=30, what=f"dnsmasq would not start in {d.netns}")
    pid = running(d.pidfile)
    if pid is None:
        raise CorralError(f"dnsmasq in {d.netns} started but {d.pidfile} names no dnsmasq")
    return pid


def _make_searchable(dir: Path) -> None:
    """Make ``dir`` and its missing parents searchable, not listable, by others (0711,
    whatever the umask); directories that exist are left as they are."""
    if dir.is_dir():
        return
    _make_searchable(dir.parent)
    dir.mkdir(exist_ok=True)
    dir.chmod(0o711)


def reload(d: Dnsmasq, ports: Iterable[Port]) -> None:
    """Rewrite the hosts and names files; if they changed, have dnsmasq read them again
    (SIGHUP). Then release the leases no NIC holds any more (:func:`release_stale`)."""
    ports = list(ports)
    pid = running(d.pidfile)
    if write_hosts(d, ports) and pid is not None:
        os.kill(pid, signal.SIGHUP)
    if pid is not None:
        release_stale(d, ports)


def release_stale(d: Dnsmasq, ports: Iterable[Port]) -> list[str]:
    """Release each lease that is not a NIC's of ``ports`` (its MAC with its address): the
    lease of a NIC that went (its VM destroyed, the NIC detached) lives on until it expires,
    and dnsmasq gives a reserved address to no other MAC meanwhile, so the next VM given
    that address got no lease for an hour. ``dhcp_release`` (dnsmasq-utils) sends dnsmasq
    the DHCPRELEASE the guest never sent, as OpenStack's DHCP agent does. Best effort
    (logged); the released addresses."""
    held = {(p.mac, p.ip) for p in ports}
    released = []
    for mac, ip in leases(d).items():
        if (mac, ip) in held:
            continue
        try:
            run(["ip", "netns", "exec", d.netns, "dhcp_release", d.interface, ip, mac],
                timeout=10, what=f"the release of {ip}'s lease in {d.netns}")
            released.append(ip)
        except CorralError as err:
            log.warning("%s", err.message)
    return released


def running(pidfile: Path) -> int | None:
    """The pid of the dnsmasq that ``pidfile`` names, if it runs with that pid file."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    argv = _cmdline(pid)
    if argv and Path(argv[0]).name == "dnsmasq" and f"--pid-file={pidfile}" in argv:
        return pid
    return None


def stop(dir: Path, timeout: float = 5.0) -> None:
    """Stop the dnsmasq whose files are in ``dir`` (SIGTERM, then SIGKILL) and remove them.

    :raises Timeout: when it outlives even SIGKILL.
    """
    pid = running(dir / "dnsmasq.pid")
    if pid is not None:
        terminate(pid, timeout)
    for path in (dir.iterdir() if dir.is_dir() else ()):
        path.unlink()
    if dir.is_dir():
        dir.rmdir()


def terminate(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM ``pid`` and wait for it to exit; SIGKILL it after ``timeout``.

    :raises Timeout: when it outlives even SIGKILL.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
            signal.pidfd_send_signal(fd, sig)
            if select.select([fd], [], [], wait)[0]:
                _reap(pid)
                return
        raise Timeout(f"dnsmasq {pid} did not exit after SIGKILL")
    except ProcessLookupError:
        return
    finally:
        os.close(fd)


def _reap(pid: int) -> None:
    # A daemon that is a child subreaper inherits dnsmasq when its first process exits.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def find_all() -> dict[int, Path]:
    """Every live dnsmasq started by Corral (on any host of this machine): pid -> its
    files' directory."""
    found: dict[int, Path] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        argv = _cmdline(int(entry.name))  # empty for a zombie
        if argv and Path(argv[0]).name == "dnsmasq" and any(a.startswith(MARK) for a in argv):
            pidfile = next((a for a in argv if a.startswith("--pid-file=")), "=/")
            found[int(entry.name)] = Path(pidfile.partition("=")[2]).parent
    return found


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def leases(d: Dnsmasq) -> dict[str, str]:
    """MAC -> address of every lease dnsmasq has handed out."""
    path = d.dir / "leases"
    fields = [line.split() for line in (path.read_text().splitlines() if path.exists() else ())]
    return {f[1]: f[2] for f in fields if len(f) >= 3}
