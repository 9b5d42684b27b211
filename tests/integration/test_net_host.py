"""The host side of virtual networks on real Linux objects (root; no VMs).

Each test gets a namespace standing in for the host, so the machine's own links and nft
ruleset are never touched, and namespaces standing in for guests: each hangs on a bridge by a
veth whose host end plays the VM's tap (one test writes frames into a real tap instead).
Traffic is TCP or UDP between sockets opened inside those namespaces. After every test
nothing with Corral's prefixes may be left anywhere on the machine.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import secrets
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from corral.errors import CommandFailed, CorralError, InvalidSpec
from corral.host.network import (
    OPEN,
    Firewall,
    Host,
    Leg,
    NetworkPlan,
    Port,
    Record,
    RouterPlan,
    attach,
    collect_garbage,
    counters,
    dnsmasq,
    ensure_network,
    ensure_router,
    ensure_tap,
    leases,
    links,
    names,
    parse_rule,
    plan_forward,
    plan_leg,
    plan_network,
    plan_port,
    plan_router,
    remove,
    set_forwards,
    update_network,
)
from corral.host.network.nft import Nft
from tests.integration.netcheck import assert_no_network_leftovers

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(b) for b in ("ip", "nft", "dnsmasq")),
    reason="needs root, ip, nft and dnsmasq")

DEFAULT = IPv4Network("0.0.0.0/0")
QUICK = 0.3  # seconds to wait for traffic that should be dropped: veths answer in microseconds


@dataclasses.dataclass(frozen=True)
class Guest:
    netns: str
    port: Port

    @property
    def ip(self) -> str:
        return self.port.ip


class World:
    """A stand-in host with what a test made in it, removed exactly at the end."""

    def __init__(self, run_dir: Path) -> None:
        self.tag = secrets.token_hex(2)[:3]
        self.netns = f"corral-th{self.tag}"
        self.host = Host(run_dir=run_dir, netns=self.netns)
        self.records: list[Record] = []
        self.networks: list[NetworkPlan] = []
        self.routers: list[RouterPlan] = []
        self.ports: list[Port] = []
        self.guests: list[str] = []
        self.sockets: list[socket.socket] = []
        self.veths: list[str] = []  # the test's own, in the host

    def taken(self) -> set[str]:
        return {r.name for r in self.records} | {p.ifname for p in self.ports}

    def network(self, name: str, subnet: str, *, firewall: Firewall = OPEN) -> NetworkPlan:
        plan = plan_network(f"{name}{self.tag}", subnet, taken=self.taken(),
                            existing={n.name: n.network for n in self.networks})
        self.networks.append(plan)
        self.records += ensure_network(self.host, plan, firewall=firewall).records
        return plan

    def router(self, name: str, uplink: bool = False) -> RouterPlan:
        plan = plan_router(f"{name}{self.tag}", uplink=uplink, taken=self.taken(),
                           transfers=[r.transfer for r in self.routers if r.transfer])
        self.routers.append(plan)
        self.records += ensure_router(self.host, plan).records
        return plan

    def attach(self, router: RouterPlan, net: NetworkPlan) -> list[Record]:
        leg = plan_leg(router, net, legs=[], taken=self.taken())
        made = list(attach(self.host, router, leg, net).records)
        self.records += made
        return made

    def port(self, net: NetworkPlan, vm: str) -> Port:
        port = plan_port(net, vm, 0, ports=[p for p in self.ports if p.network == net.name],
                         taken=self.taken(), macs={p.mac for p in self.ports})
        self.ports.append(port)
        return port

    def guest(self, net: NetworkPlan, vm: str, *, configure: bool = True) -> Guest:
        """A namespace on ``net`` with the port's MAC (and, if ``configure``, its address
        and a default route through the gateway)."""
        n = len(self.guests)
        netns, veth = f"corral-tg{self.tag}{n}", f"crl-vc{self.tag}{n}"
        port = dataclasses.replace(self.port(net, vm), ifname=veth)
        self.ports[-1] = port
        self.guests.append(netns)
        self.veths.append(veth)
        links.add_netns(netns)
        address = IPv4Interface(f"{port.ip}/{net.network.prefixlen}")
        links.add_veth(veth, netns, netns=self.host.netns, bridge=net.bridge,
                       peer_mac=port.mac, peer_address=address if configure else None)
        if configure:
            links.add_route(DEFAULT, IPv4Address(net.gateway), netns)
        return Guest(netns, port)

    def listen(self, netns: str | None, port: int,
               kind: int = socket.SOCK_STREAM) -> socket.socket:
        """A socket bound to ``port`` inside ``netns`` (it stays there once made)."""
        def make() -> socket.socket:
            sock = socket.socket(socket.AF_INET, kind)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", port))
            if kind == socket.SOCK_STREAM:
                sock.listen(8)
            sock.settimeout(QUICK if kind == socket.SOCK_DGRAM else 2)
            return sock
        sock = links.run_in(netns, make)
        self.sockets.append(sock)
        return sock

    def sync(self, net: NetworkPlan, firewall: Firewall = OPEN) -> None:
        update_network(self.host, net, [p for p in self.ports if p.network == net.name],
                       firewall)

    def close(self) -> None:
        """Remove what the records name, then check that this left nothing in the host."""
        for sock in self.sockets:
            sock.close()
        try:
            remove(self.records)
            for veth in self.veths:
                links.delete_link(veth, self.host.netns)
            left = links.link_names("crl-", self.host.netns)
            tables = Nft(self.host.netns).tables()
            assert (left, tables) == ([], []), "remove() left these in the host"
        finally:
            for pid, dir in dnsmasq.find_all().items():
                if dir.is_relative_to(self.host.run_dir):
                    dnsmasq.terminate(pid)
            made = [n.netns for n in self.networks] + [r.netns for r in self.routers]
            for netns in [*made, *self.guests, self.netns]:
                links.delete_netns(netns)
            shutil.rmtree(self.host.run_dir, ignore_errors=True)


@pytest.fixture
def world() -> Iterator[World]:
    run_dir = Path(tempfile.mkdtemp(prefix="corral-net-"))
    run_dir.chmod(0o755)  # dnsmasq reads its hosts file as nobody
    w = World(run_dir)
    links.add_netns(w.netns)
    try:
        yield w
    finally:
        w.close()
    assert_no_network_leftovers()


# -- traffic helpers -------------------------------------------------------------------------

def connect(netns: str | None, ip: str, port: int, source: str | None = None,
            timeout: float = 3.0) -> bool:
    """Whether a TCP connection from ``netns`` to ``ip``:``port`` is accepted (the first SYN
    may be lost while a new port waits for the kernel to see its carrier: hence the time)."""
    def attempt() -> bool:
        try:
            socket.create_connection((ip, port), timeout=timeout,
                                     source_address=(source, 0) if source else None).close()
        except OSError:
            return False
        return True
    return links.run_in(netns, attempt)


def blocked(netns: str | None, ip: str, port: int, source: str | None = None) -> bool:
    """Whether that connection fails, or stays unanswered for a while."""
    return not connect(netns, ip, port, source, timeout=QUICK)


def peer_of(server: socket.socket) -> str:
    """The address the connection waiting on ``server`` came from."""
    conn, (address, _) = server.accept()
    conn.close()
    return str(address)


def in_netns(netns: str, *argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True,
                          text=True, timeout=20).stdout


# -- one switch ------------------------------------------------------------------------------

def test_bridge_joins_two_namespaces(world: World) -> None:
    lan = world.network("lan", "10.41.0.0/24")
    a, b = world.guest(lan, "a"), world.guest(lan, "b")
    server = world.listen(b.netns, 7000)
    before = counters(b.port.ifname, world.host.netns)
    assert connect(a.netns, b.ip, 7000)
    assert peer_of(server) == a.ip
    after = counters(b.port.ifname, world.host.netns)
    assert after.tx_packets > before.tx_packets and after.rx_bytes > before.rx_bytes


def test_tap_carries_frames_and_antispoofing_drops_forged_ones(world: World) -> None:
    lan = world.network("lan", "10.42.0.0/24")
    b = world.guest(lan, "b")
    vm = world.port(lan, "vm")
    world.records += ensure_tap(world.host, lan, vm).records
    inbox = world.listen(b.netns, 7200, socket.SOCK_DGRAM)
    fd = links.run_in(world.host.netns, lambda: _open_tap(vm.ifname))
    forged_ip = _frame(vm.mac, b.port.mac, "10.42.0.99", b.ip, b"forged address")
    forged_mac = _frame("52:54:00:66:66:66", b.port.mac, vm.ip, b.ip, b"forged MAC")
    try:
        # the bridge takes the port up only when the kernel's link watcher sees the carrier
        # the open brought, up to a second later: until then frames are lost
        deadline = time.monotonic() + 3
        while True:
            os.write(fd, forged_ip)
            try:
                assert inbox.recv(100) == b"forged address", "passes before the guard"
                break
            except TimeoutError:
                assert time.monotonic() < deadline, "the tap never forwarded a frame"
        world.sync(lan)
        os.write(fd, _frame(vm.mac, b.port.mac, vm.ip, b.ip, b"genuine"))
        assert inbox.recv(100) == b"genuine"
        os.write(fd, forged_ip)
        os.write(fd, forged_mac)
        with pytest.raises(TimeoutError):
            inbox.recv(100)
    finally:
        os.close(fd)
    assert counters(vm.ifname, world.host.netns).rx_packets >= 4


def test_antispoofing_drops_a_forged_source_address_and_mac(world: World) -> None:
    lan = world.network("lan", "10.43.0.0/24")
    a, b = world.guest(lan, "a"), world.guest(lan, "b")
    server = world.listen(b.netns, 7000)
    links.add_address(a.port.ifname, IPv4Interface("10.43.0.99/24"), a.netns)
    assert connect(a.netns, b.ip, 7000, source="10.43.0.99"), "passes before the guard"
    assert peer_of(server) == "10.43.0.99"
    world.sync(lan)
    assert connect(a.netns, b.ip, 7000) and peer_of(server) == a.ip
    assert blocked(a.netns, b.ip, 7000, source="10.43.0.99")
    subprocess.run(["ip", "-n", a.netns, "link", "set", a.port.ifname, "address",
                    "52:54:00:66:66:66"], check=True)
    assert blocked(a.netns, b.ip, 7000)


def test_firewall_blocks_then_allows(world: World) -> None:
    lan = world.network("lan", "10.44.0.0/24")
    a, b = world.guest(lan, "a"), world.guest(lan, "b")
    ssh, telnet = world.listen(b.netns, 22), world.listen(b.netns, 23)
    assert connect(a.netns, b.ip, 23) and peer_of(telnet) == a.ip
    world.sync(lan, Firewall("drop"))
    assert blocked(a.netns, b.ip, 22) and blocked(a.netns, b.ip, 23)
    world.sync(lan, Firewall("drop", (parse_rule("tcp/22", "10.99.0.0/24", vm=b.port.vm),)))
    assert blocked(a.netns, b.ip, 22), "allowed from another subnet only"
    world.sync(lan, Firewall("drop", (parse_rule("tcp/22", lan.subnet, vm=b.port.vm),)))
    assert connect(a.netns, b.ip, 22) and peer_of(ssh) == a.ip
    assert blocked(a.netns, b.ip, 23)
    world.sync(lan, OPEN)
    assert connect(a.netns, b.ip, 23) and peer_of(telnet) == a.ip


def test_dnsmasq_leases_by_mac_and_answers_names(world: World) -> None:
    if shutil.which("busybox") is None:
        pytest.skip("busybox (Debian busybox-static) provides the DHCP client")
    lan = world.network("lan", "10.45.0.0/24")
    web = world.guest(lan, "web", configure=False)
    world.sync(lan)
    script = world.host.run_dir / "udhcpc.sh"
    script.write_text('#!/bin/sh\n[ "$1" = bound ] || exit 0\n'
                      'ip addr add "$ip/$mask" dev "$interface"\n'
                      'echo "lease $ip router $router dns $dns domain $domain"\n')
    script.chmod(0o755)
    out = in_netns(web.netns, "busybox", "udhcpc", "-i", web.port.ifname, "-f", "-q", "-n",
                   "-t", "5", "-T", "1", "-s", str(script))
    assert f"lease {web.ip} router {lan.gateway} dns {lan.dhcp_server} domain corral" in out
    assert leases(world.host, lan) == {web.port.mac: web.ip}
    assert f"Address: {web.ip}" in in_netns(web.netns, "busybox", "nslookup",
                                            "web.corral", lan.dhcp_server)
    db = world.port(lan, "db")
    world.sync(lan)  # a new reservation: the hosts file is rewritten and dnsmasq gets SIGHUP
    deadline = time.monotonic() + 2
    while f"Address: {db.ip}" not in (answer := in_netns(
            web.netns, "busybox", "nslookup", "db.corral", lan.dhcp_server)):
        assert time.monotonic() < deadline, answer
        time.sleep(0.05)


# -- routers ---------------------------------------------------------------------------------

def test_router_joins_networks_and_unjoined_ones_stay_apart(world: World) -> None:
    lan, dmz = world.network("lan", "10.46.0.0/24"), world.network("dmz", "10.47.0.0/24")
    other = world.network("oth", "10.48.0.0/24")
    gw = world.router("gw")
    world.attach(gw, lan)
    dmz_leg = world.attach(gw, dmz)
    a, b, c = world.guest(lan, "a"), world.guest(dmz, "b"), world.guest(other, "c")
    server = world.listen(b.netns, 7000)
    assert connect(a.netns, b.ip, 7000) and peer_of(server) == a.ip  # routed, not NATed
    assert blocked(c.netns, b.ip, 7000)
    assert blocked(a.netns, c.ip, 7000)
    with pytest.raises(InvalidSpec, match="already attached"):
        plan_leg(gw, dmz, legs=[Leg(gw.name, dmz.name, "crl-vlx", "10.47.0.1/24")],
                 taken=world.taken())
    remove(dmz_leg)  # detach
    world.records = [r for r in world.records if r not in dmz_leg]
    assert blocked(a.netns, b.ip, 7000)


def test_uplink_masquerades_and_forwards_host_ports(world: World) -> None:
    lan = world.network("lan", "10.49.0.0/24")
    gw = world.router("gw", uplink=True)
    world.attach(gw, lan)
    a = world.guest(lan, "a")
    host_ip, router_ip = str(gw.host_ip.ip), str(gw.router_ip.ip)
    on_host = world.listen(world.host.netns, 7100)
    assert connect(a.netns, host_ip, 7100)
    assert peer_of(on_host) == router_ip, "the host sees the router's address"
    web = world.listen(a.netns, 80)
    forward = plan_forward(gw, "tcp", 8080, a.ip, 80, forwards=[], subnets=[lan.subnet])
    set_forwards(world.host, gw, [forward])
    for target in ("127.0.0.1", host_ip):
        assert connect(world.host.netns, target, 8080), target
        assert peer_of(web) == host_ip
    assert connect(world.host.netns, a.ip, 80), "the host routes back to the network"
    assert peer_of(web) == host_ip
    with pytest.raises(InvalidSpec, match="already forwarded"):
        plan_forward(gw, "tcp", 8080, a.ip, 22, forwards=[forward], subnets=[lan.subnet])
    set_forwards(world.host, gw, [])
    assert blocked(world.host.netns, "127.0.0.1", 8080)


def test_beyond_the_host_and_no_way_between_routers(world: World) -> None:
    """With forwarding on in the host, guests reach past it (masqueraded twice), but never
    the networks of another router through it."""
    host = world.host
    links.write_sysctl(host.netns, "net/ipv4/ip_forward", "1")
    outside = f"corral-to{world.tag}"
    world.guests.append(outside)
    world.veths.append(f"crl-vo{world.tag}")
    links.add_netns(outside)
    links.add_veth(f"crl-vo{world.tag}", outside, netns=host.netns,
                   peer_address=IPv4Interface("198.51.100.2/24"))
    links.add_address(f"crl-vo{world.tag}", IPv4Interface("198.51.100.1/24"), host.netns)
    lan, dmz = world.network("lan", "10.50.0.0/24"), world.network("dmz", "10.51.0.0/24")
    gw1, gw2 = world.router("ga", uplink=True), world.router("gb", uplink=True)
    world.attach(gw1, lan)
    world.attach(gw2, dmz)
    a, b = world.guest(lan, "a"), world.guest(dmz, "b")
    far = world.listen(outside, 7300)
    assert connect(a.netns, "198.51.100.2", 7300)
    assert peer_of(far) == "198.51.100.1"
    server = world.listen(b.netns, 7000)
    assert connect(host.netns, b.ip, 7000) and peer_of(server) == str(gw2.host_ip.ip)
    assert blocked(a.netns, b.ip, 7000)
    Nft(host.netns).apply([{"flush": {"chain": {"family": "ip", "table": gw.netns,
                                                "name": "isolate"}}} for gw in (gw1, gw2)])
    assert connect(a.netns, b.ip, 7000), "only the isolate chains stood in the way"
    assert peer_of(server) == str(gw1.router_ip.ip)
    set_forwards(host, gw1, [])  # rebuilds the host's table of gw1, its rule included
    assert blocked(a.netns, b.ip, 7000)


# -- all or nothing, restarts, garbage ---------------------------------------------------------

def test_failures_half_way_roll_back_everything(world: World,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    host = world.host
    lan = plan_network(f"lan{world.tag}", "10.52.0.0/24", existing={})
    world.networks.append(lan)
    host.run_dir.chmod(0o700)  # dnsmasq (as nobody) could not read its files: refused
    with pytest.raises(CorralError, match="not searchable"):
        ensure_network(host, lan)
    host.run_dir.chmod(0o755)
    assert not links.link_exists(lan.bridge, host.netns)
    assert not links.netns_exists(lan.netns)
    assert Nft(host.netns).tables() == []

    gw = plan_router(f"gw{world.tag}", uplink=True, taken=())
    world.routers.append(gw)

    def no_route(*args: object) -> bool:
        raise CommandFailed(["netlink", "route", "add"], 101, "Network is unreachable")
    monkeypatch.setattr(links, "add_route", no_route)
    with pytest.raises(CommandFailed, match="unreachable"):
        ensure_router(host, gw)
    assert not links.netns_exists(gw.netns)
    assert links.link_names("crl-", host.netns) == []
    assert Nft(host.netns).tables() == []

    with pytest.raises(InvalidSpec) as err:
        links.add_bridge("crl-br-waytoolong", host.netns)
    assert err.value.field == "bridge" and "at most 15" in str(err.value)


def test_restart_finds_everything_again_and_garbage_is_collected(world: World) -> None:
    host = world.host
    lan = world.network("lan", "10.53.0.0/24")
    gw = world.router("gw", uplink=True)
    world.attach(gw, lan)
    again = ensure_network(host, lan)
    assert again.new == () and set(again.records) <= set(world.records)
    assert ensure_router(host, gw).new == ()
    pid = dnsmasq.running(host.run_dir / lan.netns / "dnsmasq.pid")
    assert pid is not None
    dnsmasq.terminate(pid)  # the daemon was down while these went
    links.delete_link(lan.veth, host.netns)
    rebuilt = ensure_network(host, lan)
    assert {(r.kind, r.name) for r in rebuilt.new} == {("veth", lan.veth),
                                                      ("dnsmasq", lan.veth)}
    # a crash half-way leaves objects without records: a whole network, and strays
    lost = plan_network(f"tmp{world.tag}", "10.54.0.0/24", existing={},
                        taken=world.taken())
    world.networks.append(lost)
    lost_records = ensure_network(host, lost).records
    stray = names.make("bridge", "stray")
    links.add_bridge(stray, host.netns)
    others = [Record("netns", ns, "elsewhere") for ns in links.netns_list("corral-")
              if ns not in {r.name for r in [*world.records, *lost_records]}]
    garbage = collect_garbage(host, keep=[*world.records, *others])
    assert {(r.kind, r.name) for r in garbage if r.kind != "dnsmasq"} == {
        (r.kind, r.name) for r in lost_records if r.kind != "dnsmasq"} | {("bridge", stray)}
    assert [Path(r.detail) for r in garbage if r.kind == "dnsmasq"] == [
        host.run_dir / lost.netns]
    assert not links.netns_exists(lost.netns)
    assert links.link_exists(lan.bridge, host.netns) and links.netns_exists(gw.netns)
    assert collect_garbage(host, keep=[*world.records, *others]) == []


def test_on_the_real_host_bridge_and_tap() -> None:
    """netns=None: the machine's own namespace (no traffic, and removed at once)."""
    tag = secrets.token_hex(2)
    bridge, tap = f"crl-br-t{tag}", f"crl-tt{tag}"
    try:
        assert links.add_bridge(bridge) and links.add_tap(tap, bridge)
        assert not links.add_tap(tap, bridge), "made once"
        shown = subprocess.run(["ip", "-d", "link", "show", tap], capture_output=True,
                               text=True, check=True).stdout
        assert f"master {bridge}" in shown and "vnet_hdr on" in shown and "persist on" in shown
    finally:
        links.delete_link(tap)
        links.delete_link(bridge)
    assert_no_network_leftovers()


# -- raw frames into a tap -------------------------------------------------------------------

def _open_tap(name: str) -> int:
    tunsetiff, iff_tap, iff_no_pi = 0x400454CA, 0x0002, 0x1000
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, tunsetiff, struct.pack("16sH", name.encode(), iff_tap | iff_no_pi))
    return fd


def _frame(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, payload: bytes) -> bytes:
    """An Ethernet frame carrying a UDP datagram from port 5555 to port 7200."""
    udp = struct.pack("!HHHH", 5555, 7200, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                         IPv4Address(src_ip).packed, IPv4Address(dst_ip).packed)
    total = sum(struct.unpack("!10H", header))
    total = (total & 0xFFFF) + (total >> 16)
    header = header[:10] + struct.pack("!H", ~total & 0xFFFF) + header[12:]
    mac = bytes.fromhex
    return mac(dst_mac.replace(":", "")) + mac(src_mac.replace(":", "")) + b"\x08\x00" \
        + header + udp
