"""Virtual networks end to end, on real guests under the real daemon.

One daemon for the module and one world in it, built up test by test the way a user would:
network ``lan`` with VMs ``a`` and ``b``, network ``dmz`` with ``c``, then router ``gw``
(with an uplink) joining them; firewall, anti-spoofing, a hot-plugged NIC and a daemon
restart on that world; finally everything is removed and nothing of it may be left on the
machine. The last test runs its own daemon as an unprivileged user (user-mode networking).
Traffic comes from busybox in the guests (``corral exec``) and from sockets on the host.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from corral.errors import CorralError

from .conftest import CORRAL, HOMES, Daemon, assert_nothing_left, remove_everything, running_daemon
from .netcheck import assert_no_network_leftovers

pytestmark = pytest.mark.skipif(
    not all(shutil.which(b) for b in ("ip", "nft", "dnsmasq", "setpriv")),
    reason="needs ip, nft, dnsmasq and setpriv")

NET = 100 + os.getpid() % 100  # second octet of the subnets: parallel runs rarely meet
LAN, DMZ, ISO = (f"10.{NET}.{i}.0/24" for i in (1, 2, 3))
FIXED = f"10.{NET}.1.5"


def sh(d: Daemon, vm: str, script: str, timeout: float = 30) -> tuple[int, str]:
    res = d.client.exec(vm, ["sh", "-c", script], timeout=timeout)
    return int(res["exitcode"]), (res["stdout"] + res["stderr"]).decode(errors="replace")


def until(check: Callable[[], bool], within: float = 15) -> bool:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def pings(d: Daemon, vm: str, target: str) -> bool:
    return sh(d, vm, f"ping -c 1 -W 1 {target}")[0] == 0


def guest_ips(d: Daemon, vm: str) -> str:
    return sh(d, vm, "ip -4 -o addr show")[1]


def http_from(d: Daemon, vm: str, ip: str) -> str:
    """What ``vm`` gets for GET / from ``ip``:80 (empty when it gets nothing)."""
    return sh(d, vm, f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {ip} 80")[1]


def serve_http(d: Daemon, vm: str) -> None:
    rc, out = sh(d, vm, f"mkdir -p /www && echo hello-from-{vm} >/www/index.html && "
                        "httpd -h /www -p 80")
    assert rc == 0, out


def http_get(host: str, port: int) -> str:
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        return b"".join(iter(lambda: s.recv(4096), b"")).decode(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ok(d: Daemon, *args: str) -> str:
    res = d.cli(*args)
    assert res.returncode == 0, f"corral {' '.join(args)}: {res.stderr}"
    return res.stdout


def links_and_dnsmasqs() -> dict[str, int]:
    """Interface name -> ifindex of every crl- link, and 'dnsmasq PID' entries."""
    found = {f"dnsmasq {p}": 0 for p in subprocess.run(
        ["pgrep", "-x", "dnsmasq"], capture_output=True, text=True).stdout.split()}
    for link in json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True,
                                          text=True, check=True).stdout):
        if link["ifname"].startswith("crl-"):
            found[link["ifname"]] = link["ifindex"]
    return found


@pytest.fixture(scope="module")
def world(image_path: str) -> Iterator[Daemon]:
    with running_daemon(image_path) as d:
        # a private home (mkdtemp makes it 0700): dnsmasq, as nobody, reads its files
        # outside it
        assert d.home.stat().st_mode & 0o777 == 0o700
        try:
            yield d
        finally:
            remove_everything(d.client)
    assert_no_network_leftovers()


def test_one_switch_gives_addresses_and_names(world: Daemon) -> None:
    d, c = world, world.client
    lan = json.loads(ok(d, "network", "create", "lan", "--subnet", LAN, "--json"))
    assert (lan["gateway"], lan["dhcp_server"]) == (f"10.{NET}.1.1", f"10.{NET}.1.2")
    res = d.cli("network", "create", "lan2", "--subnet", f"10.{NET}.1.128/25")
    assert res.returncode == 2 and "overlaps network 'lan'" in res.stderr
    ok(d, "run", "a", "--nic", "lan")
    a_ip = c.get("a")["nics"][0]["ip"]
    assert a_ip in ok(d, "ip", "a"), "ready means the guest holds its DHCP address"
    c.create("b", start=True, wait=True, nics=[{"network": "lan", "ip": FIXED}])
    res = d.cli("create", "x", "--nic", f"lan,ip={FIXED}")
    assert res.returncode == 2 and "already taken" in res.stderr, res.stderr
    res = d.cli("create", "x", "--nic", f"lan,ip=10.{NET}.9.9")
    assert res.returncode == 2 and "not a host address" in res.stderr, res.stderr
    assert [v["name"] for v in c.list()] == ["a", "b"]
    assert until(lambda: a_ip in guest_ips(d, "a") and FIXED in guest_ips(d, "b"))
    assert until(lambda: pings(d, "a", "b.corral")), "a cannot reach b by name"
    assert pings(d, "b", "a.corral")
    ports = {p["vm"]: p for p in c.network_show("lan")["ports"]}
    assert (ports["b"]["ip"], ports["b"]["lease"]) == (FIXED, FIXED)
    assert ports["a"]["lease"] == a_ip and ports["a"]["counters"]["tx_packets"] > 0
    shown = ok(d, "show", "a")
    assert f"network lan  ip {a_ip}  lease {a_ip}" in shown and " rx " in shown, shown


def test_routers_join_networks_reach_the_host_and_forward_ports(world: Daemon) -> None:
    d, c = world, world.client
    ok(d, "network", "create", "dmz", "--subnet", DMZ)
    ok(d, "run", "c", "--nic", "dmz")
    c_ip = c.get("c")["nics"][0]["ip"]
    assert until(lambda: c_ip in guest_ips(d, "c"))
    assert not pings(d, "a", c_ip), "networks no router joins must stay apart"
    ok(d, "router", "create", "gw", "--uplink")
    ok(d, "router", "attach", "gw", "lan")
    ok(d, "router", "attach", "gw", "dmz")
    assert until(lambda: pings(d, "a", c_ip)), "the router does not join lan and dmz"
    ok(d, "network", "create", "iso", "--subnet", ISO, "--isolated")
    res = d.cli("router", "attach", "gw", "iso")
    assert res.returncode == 2 and "isolated" in res.stderr

    gw = c.router_show("gw")
    with socket.create_server(("0.0.0.0", 0)) as server:  # a service on the host
        server.settimeout(10)
        seen: list[str] = []

        def answer() -> None:
            conn, (peer, _) = server.accept()
            with conn:
                conn.sendall(b"from-host\n")
            seen.append(peer)
        thread = threading.Thread(target=answer)
        thread.start()
        out = sh(d, "c", f"nc {gw['host_address']} {server.getsockname()[1]} </dev/null")[1]
        thread.join()
    assert "from-host" in out, out
    assert seen == [gw["router_address"]], "the host sees the router's address"

    serve_http(d, "c")
    host_port = free_port()
    ok(d, "router", "forward", "gw", "tcp", str(host_port), "c:80")
    assert "hello-from-c" in http_get("127.0.0.1", host_port)
    res = d.cli("router", "forward", "gw", "tcp", str(host_port), "a:22")
    assert res.returncode == 2 and "already forwarded" in res.stderr
    assert f"tcp/{host_port}" in ok(d, "router", "forwards")


def test_firewall_blocks_then_allows(world: Daemon) -> None:
    d, c = world, world.client
    serve_http(d, "b")
    assert "hello-from-b" in http_from(d, "a", FIXED)
    ok(d, "firewall", "policy", "lan", "drop")
    assert "hello-from-b" not in http_from(d, "a", FIXED)
    rule = json.loads(ok(d, "firewall", "add", "b", "--allow", "tcp/80", "--from", LAN,
                         "--json"))
    assert "hello-from-b" in http_from(d, "a", FIXED)
    assert f"#{rule['id']}  allow tcp/80 from {LAN} to VM b" in ok(d, "firewall", "list")
    ok(d, "firewall", "rm", str(rule["id"]))
    ok(d, "firewall", "policy", "lan", "accept")
    assert c.firewall_list()["rules"] == []


def test_a_forged_source_address_is_dropped(world: Daemon) -> None:
    d = world
    forged = f"10.{NET}.1.99"
    out = sh(d, "a", f"ip addr add {forged}/24 dev eth0 && "
                     f"ping -c 2 -W 1 -I {forged} {FIXED}; echo forged=$?; "
                     f"ip addr del {forged}/24 dev eth0; ping -c 1 -W 2 {FIXED}; "
                     "echo own=$?")[1]
    assert "forged=1" in out and "own=0" in out, out


def test_warm_starts_of_a_vm_on_a_network_get_addresses_of_their_own(world: Daemon) -> None:
    """A memory snapshot of a running VM on a network makes its template (the helper QEMU
    takes a tap of its own, the VM holding its own), and each warm start of it is ready
    with its own MAC and lease: not the source's address, which the switch drops from it.
    An address freed by a destroyed VM is leased again at once. A warm pool of it hands out
    VMs that answer to their new names in DNS, and leave no tap behind."""
    d, c = world, world.client
    ok(d, "snapshot", "create", "a", "warm", "--memory", "--template")
    for name in ("w1", "w2"):
        ok(d, "run", name, "--from-snapshot", "a:warm")
    nics = {name: c.get(name)["nics"][0] for name in ("a", "w1", "w2")}
    assert len({n["ip"] for n in nics.values()}) == 3, nics
    for name in ("w1", "w2"):
        shown = sh(d, name, "ip -4 -o addr show dev eth0; cat /sys/class/net/eth0/address")[1]
        assert nics[name]["ip"] in shown and nics[name]["mac"] in shown, shown
        assert nics["a"]["ip"] not in shown, shown
    assert pings(d, "w1", "w2.corral") and pings(d, "w2", "a.corral")
    # the lowest free address goes to the next NIC: w1's lease was released with it (dnsmasq
    # gives a reserved address to no other MAC while a lease on it lives)
    c.rm("w1")
    ok(d, "run", "w3", "--from-snapshot", "a:warm")
    assert c.get("w3")["nics"][0]["ip"] == nics["w1"]["ip"]
    assert nics["w1"]["ip"] in guest_ips(d, "w3")
    c.rm("w2")
    c.rm("w3")
    # a pool of it: the VM handed out has the clone's own address and its new name in DNS
    ok(d, "pool", "create", "p", "--from-snapshot", "a:warm", "--size", "1")
    assert until(lambda: c.pool_show("p")["free"] == 1, within=60), c.pool_show("p")
    clone = c.pool_show("p")["clones"][0]
    ok(d, "run", "job", "--pool", "p")
    job = c.get("job")["nics"][0]
    assert job["ip"] != nics["a"]["ip"] and job["ip"] in guest_ips(d, "job")
    assert until(lambda: pings(d, "a", "job.corral")), "job's name did not follow it"
    assert sh(d, "job", "hostname")[1].strip() == "job"
    assert not pings(d, "a", f"{clone}.corral")
    # a batch command through it sees its VM's name and the host's clock at once, not those
    # its clone slept with (paused in the pool these 4 seconds)
    assert until(lambda: c.pool_show("p")["free"] == 1, within=60), c.pool_show("p")
    time.sleep(4)
    before = time.time()
    batch = d.cli("run", "--rm", "--pool", "p", "--", "sh", "-c", "hostname; date +%s")
    after = time.time()
    name, clock = batch.stdout.split()
    assert name.startswith("batch-") and before - 2 < int(clock) < after + 1, batch.stdout
    ok(d, "pool", "rm", "p")
    c.rm("job")
    c.snapshot_rm("a", "warm")
    taps = {link for link in links_and_dnsmasqs() if link.startswith("crl-t")}
    assert taps == {n["ifname"] for v in c.list() for n in c.get(v["name"])["nics"]}, taps


def test_a_hot_plugged_nic_works_and_goes(world: Daemon) -> None:
    d, c = world, world.client
    vm = json.loads(ok(d, "attach-nic", "c", "lan", "--json"))
    nic = vm["nics"][-1]
    assert (nic["id"], nic["network"]) == ("nic1", "lan")
    assert until(lambda: nic["ip"] in guest_ips(d, "c")), "the guest got no lease on eth1"
    assert pings(d, "c", FIXED)
    assert nic["ifname"] in links_and_dnsmasqs()
    c.stop("c")  # the NIC stays, behind its hot-plug port; its tap goes with QEMU
    assert nic["ifname"] not in links_and_dnsmasqs()
    c.start("c", wait=True)
    assert until(lambda: nic["ip"] in guest_ips(d, "c")), "the NIC did not come back"
    c.pause("c")  # a paused guest cannot let go of it: refused at once, not after 30 s
    res = d.cli("detach-nic", "c", "nic1")
    assert res.returncode == 5 and "resume it first" in res.stderr, res.stderr
    c.resume("c")
    ok(d, "detach-nic", "c", "nic1")
    assert until(lambda: "eth1" not in sh(d, "c", "ip -o link")[1])
    assert nic["ifname"] not in links_and_dnsmasqs()
    assert [n["id"] for n in c.get("c")["nics"]] == ["nic0"]


def test_a_daemon_restart_makes_nothing_twice_and_loses_nothing(world: Daemon) -> None:
    d, c = world, world.client
    before = links_and_dnsmasqs()
    graph = ok(d, "network", "graph")
    d.stop()
    d.start()
    assert links_and_dnsmasqs() == before, "parts were made again or lost"
    assert ok(d, "network", "graph") == graph
    assert pings(d, "a", "b.corral") and pings(d, "a", c.get("c")["nics"][0]["ip"])
    assert "made again" not in (d.home / "daemon.log").read_text()
    dot = ok(d, "network", "graph", "--format", "dot")
    assert dot.startswith("graph corral {") and '"network:lan" -- "vm:a"' in dot
    res = d.cli("network", "graph", "--format", "svg")
    if shutil.which("dot"):
        assert res.returncode == 0 and "<svg" in res.stdout
    else:
        assert res.returncode == 1 and "apt-get install graphviz" in res.stderr


def test_removal_is_refused_while_used_and_leaves_nothing(world: Daemon) -> None:
    d, c = world, world.client
    res = d.cli("network", "rm", "lan")
    assert res.returncode == 5 and "used by a (nic0), b (nic0), router gw" in res.stderr
    res = d.cli("router", "rm", "gw")
    assert res.returncode == 5 and "used by network dmz, network lan" in res.stderr
    for vm in ("a", "b", "c"):
        c.destroy(vm)
    assert c.forward_list() == [], "a forward to a destroyed VM stayed"
    for net in ("lan", "dmz"):
        ok(d, "router", "detach", "gw", net)
    ok(d, "router", "rm", "gw")
    for net in ("lan", "dmz", "iso"):
        ok(d, "network", "rm", net)
    assert ok(d, "network", "graph").strip() == "no networks, routers or NICs yet"
    assert_no_network_leftovers()


class Unprivileged(Daemon):
    """A daemon (and CLI) running as nobody, with a data directory nobody owns."""

    PREFIX = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")

    def start(self) -> None:
        with (self.home / "daemon.log").open("ab") as log:
            self.proc = subprocess.Popen([*self.PREFIX, CORRAL, "serve"], env=self.env,
                                         stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        assert until(self._up, 20), (self.home / "daemon.log").read_text()

    def _up(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None
        with contextlib.suppress(CorralError):
            self.client.host_info()
            return True
        return False

    def cli(self, *args: str, check: bool = False, timeout: float = 180
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.PREFIX, CORRAL, *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout)


def test_rootless_user_mode_networking_with_a_port_forward(image_path: str) -> None:
    home = Path(tempfile.mkdtemp(prefix="crl-", dir="/tmp"))
    HOMES.append(home)
    os.chown(home, 65534, 65534)
    d = Unprivileged(home, image_path)
    d.start()
    try:
        port = free_port()
        out = d.cli("run", "web", "--nic", f"user,hostfwd=tcp:127.0.0.1:{port}-:80")
        assert out.returncode == 0, out.stderr
        assert int(subprocess.run(["stat", "-c", "%u", f"/proc/{d.client.get('web')['pid']}"],
                                  capture_output=True, text=True).stdout) == 65534
        assert until(lambda: "10.0.2.15" in guest_ips(d, "web")), "no user-mode lease"
        serve_http(d, "web")
        assert "hello-from-web" in http_get("127.0.0.1", port)
        nic = d.client.get("web")["nics"][0]
        assert nic["hostfwd"] == [f"tcp:127.0.0.1:{port}-:80"] and nic["counters"]["rx_bytes"]
        res = d.cli("network", "create", "lan", "--subnet", LAN)
        assert res.returncode == 10 and res.stderr.count("\n") == 1
        assert "needs a daemon running as root" in res.stderr and "--nic user" in res.stderr
        res = d.cli("create", "x", "--nic", "lan")
        assert res.returncode == 10, res.stderr
    finally:
        with contextlib.suppress(CorralError):
            d.client.destroy("web")
        d.stop()
        try:
            assert_nothing_left(home)
        finally:
            shutil.rmtree(home, ignore_errors=True)
