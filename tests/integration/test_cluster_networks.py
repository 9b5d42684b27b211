"""Networks that span hosts, on the three-host namespace cluster: one network made on h1
(its home: the one dnsmasq), a VM on h1 and a VM on h2 on it. Guests booted: two tiny ones.

Both guests get their addresses by DHCP from h1's dnsmasq (h2's across the VXLAN), ping
each other by address and by DNS name, and are told MTU 1450; h3, with no VM on it, carries
nothing; h1's and h2's daemons restarted find their parts again (the home's dnsmasq still
serves h2's NIC; h2's VXLAN port removed meanwhile is made again); a router with a port
forward on h1 reaches the VM on h2; the graph shows the hosts and the overlay; ``network
rm`` is refused while VMs use it; a TCP stream from a to b lasts while b is live-migrated
from h2 to h3 (b keeps its address and name; h2 then carries nothing); and at the end no
VXLAN port, bridge, nft table, dnsmasq or namespace is left on any host.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from corral.config import Paths
from corral.host.network import links
from tests.integration.cluster_fixture import DOWN_AFTER, HostDaemon, three_hosts
from tests.integration.cluster_hosts import wait_for
from tests.integration.conftest import remove_everything

pytestmark = pytest.mark.integration
# the underlay's octet: two suites at once (CORRAL_TEST_UNDERLAY) use different networks
OCTET = int(os.environ.get("CORRAL_TEST_UNDERLAY", "crlt:251").partition(":")[2])
NET = f"ov{OCTET}"  # its DHCP namespace corral-nov... is machine-wide: one per suite
SUBNET = f"10.{OCTET}.7.0/24"
PORT = 18000 + OCTET


@pytest.fixture(scope="module")
def cluster(image_path: str) -> Iterator[dict[str, HostDaemon]]:
    with three_hosts(image_path) as hosts:
        try:
            yield hosts
        finally:
            _clean(hosts)


def _clean(hosts: dict[str, HostDaemon]) -> None:
    remove_everything(hosts["h1"].client)
    wait_for(lambda: not any(_ours(h) for h in hosts.values()), 15, "network parts removed")


def _links(d: HostDaemon) -> dict[str, dict[str, Any]]:
    out = subprocess.run(["ip", "-n", d.ns, "-j", "-d", "link"], capture_output=True,
                         text=True, check=True).stdout
    return {link["ifname"]: link for link in json.loads(out)}


def _ours(d: HostDaemon) -> list[str]:
    """This host's links of the network (bridge, VXLAN port, taps), and its dnsmasq."""
    found = [n for n in _links(d) if n.startswith("crl-")]
    files = Paths(d.home).networks
    dns = subprocess.run(["pgrep", "-f", "--", f"--pid-file={files}"], capture_output=True,
                         text=True).stdout.split()
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    nft = subprocess.run(["ip", "netns", "exec", d.ns, "nft", "list", "tables"],
                         capture_output=True, text=True).stdout
    found += [f"nft {t}" for t in nft.split() if t == f"corral-n{NET}"]
    return found + [f"dnsmasq {p}" for p in dns] + \
        ([f"netns corral-n{NET}"] if f"corral-n{NET}" in ns and d.name == "h1" else [])


def sh(d: HostDaemon, vm: str, script: str, timeout: float = 30) -> tuple[int, str]:
    res = d.client.exec(vm, ["sh", "-c", script], timeout=timeout)
    return int(res["exitcode"]), (res["stdout"] + res["stderr"]).decode(errors="replace")


def pings(d: HostDaemon, vm: str, target: str) -> bool:
    return sh(d, vm, f"ping -c 1 -W 2 {target}")[0] == 0


def until(check: Callable[[], bool], within: float = 20) -> bool:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def http_in(ns: str, port: int) -> str:
    """GET / from 127.0.0.1:``port`` inside namespace ``ns`` (a host of the cluster)."""
    s = links.run_in(ns, lambda: socket.socket())
    with s:
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        return b"".join(iter(lambda: s.recv(4096), b"")).decode(errors="replace")


def test_a_network_made_on_one_host_is_the_cluster_s(cluster: dict[str, HostDaemon]) -> None:
    h1, h2, h3 = cluster["h1"], cluster["h2"], cluster["h3"]
    net = h1.json("network", "create", NET, "--subnet", SUBNET)
    assert net["home"] == "h1" and net["vni"] >= 4096 and net["mtu"] == 1450
    assert net["hosts"] == ["h1"]
    seen = {n["name"]: n for n in h3.json("network", "list")}
    assert seen[NET]["home"] == "h1" and seen[NET]["vni"] == net["vni"]
    dup = h2.cli("network", "create", NET, "--subnet", f"10.{OCTET}.8.0/24")
    assert dup.returncode == 4 and "exists" in dup.stderr, dup.stderr
    over = h3.cli("network", "create", "other", "--subnet", f"10.{OCTET}.7.128/25")
    assert over.returncode == 2 and f"overlaps network '{NET}'" in over.stderr, over.stderr
    assert [n for n in _links(h2) if n.startswith("crl-")] == [], "h2 has no VM on it yet"


def test_vms_on_two_hosts_share_one_dhcp_and_reach_each_other(
        cluster: dict[str, HostDaemon]) -> None:
    h1, h2, h3 = cluster["h1"], cluster["h2"], cluster["h3"]
    h1.json("run", "a", "--host", "h1", "--memory", "128M", "--nic", NET)
    h1.json("run", "b", "--host", "h2", "--memory", "128M", "--nic", NET)
    a_ip = h1.client.get("a")["nics"][0]["ip"]
    b_ip = h2.client.get("b")["nics"][0]["ip"]
    assert a_ip != b_ip
    assert a_ip.startswith(f"10.{OCTET}.7.") and b_ip.startswith(f"10.{OCTET}.7.")
    # b's address came by DHCP from h1's dnsmasq, over the VXLAN
    assert until(lambda: b_ip in sh(h2, "b", "ip -4 -o addr show eth0")[1])
    assert a_ip in sh(h1, "a", "ip -4 -o addr show eth0")[1]
    assert until(lambda: pings(h1, "a", b_ip)), "a cannot reach b across the hosts"
    assert until(lambda: pings(h1, "a", "b.corral")), "a cannot reach b by name"
    assert pings(h2, "b", "a.corral")
    for d, vm in ((h1, "a"), (h2, "b")):
        assert sh(d, vm, "cat /sys/class/net/eth0/mtu")[1].strip() == "1450"
    vx = [link for n, link in _links(h2).items() if n.startswith("crl-vx")]
    assert len(vx) == 1 and vx[0]["mtu"] == 1450
    info = vx[0]["linkinfo"]["info_data"]
    assert info["id"] == h1.json("network", "show", NET)["vni"]
    assert info["local"] == h2.address and info["port"] == 4789
    assert [n for n in _links(h3) if n.startswith("crl-")] == [], "h3 carries nothing"
    dnsmasqs = [h.name for h in cluster.values() if any("dnsmasq" in x for x in _ours(h))]
    assert dnsmasqs == ["h1"], "one DHCP/DNS server for the whole network"
    assert sorted(h3.json("network", "show", NET)["hosts"]) == ["h1", "h2"]
    listed = h3.cli("network", "list", check=True).stdout
    assert "home h1, on h1,h2" in listed, listed
    shown = h2.json("network", "show", NET)  # a carrier that is not the home
    assert shown["dhcp"] and shown["dhcp_server"] == f"10.{OCTET}.7.2"
    assert {p["vm"]: p["host"] for p in shown["ports"]} == {"a": "h1", "b": "h2"}


def test_hosts_restarted_find_their_parts_again(cluster: dict[str, HostDaemon]) -> None:
    h1, h2, h3 = cluster["h1"], cluster["h2"], cluster["h3"]
    before = _links(h2)
    bridge = next(n for n in before if n.startswith("crl-br-"))
    vx = next(n for n in before if n.startswith("crl-vx"))
    dns = [x for x in _ours(h1) if x.startswith("dnsmasq")]
    h1.stop()  # the home too: its dnsmasq must keep serving b's reservation
    h2.stop()
    subprocess.run(["ip", "-n", h2.ns, "link", "del", vx], check=True)
    wait_for(lambda: {h["name"]: h["state"] for h in h3.json("host", "list")
                      if h["name"] in ("h1", "h2")} == {"h1": "down", "h2": "down"},
             DOWN_AFTER + 5, "h1 and h2 down")  # before that their names are live daemons'
    h1.start()
    h2.start()
    after = _links(h2)
    assert after[bridge]["ifindex"] == before[bridge]["ifindex"], "the bridge was made twice"
    assert vx in after, "the VXLAN port removed while the daemon was away is back"
    assert [x for x in _ours(h1) if x.startswith("dnsmasq")] == dns, "dnsmasq was restarted"
    b_ip = h2.client.get("b")["nics"][0]["ip"]
    hosts_file = Paths(h1.home).networks / f"corral-n{NET}" / "hosts"
    assert b_ip in hosts_file.read_text(), "the home forgot the NIC of another host"
    assert until(lambda: pings(h1, "a", b_ip)), "the overlay does not work after a restart"


def test_a_router_on_one_host_reaches_a_vm_on_another(cluster: dict[str, HostDaemon]) -> None:
    h1, h2 = cluster["h1"], cluster["h2"]
    rc, out = sh(h2, "b", "mkdir -p /www && echo hello-from-b >/www/index.html && "
                          "httpd -h /www -p 80")
    assert rc == 0, out
    h1.json("router", "create", "gw", "--uplink")
    h1.json("router", "attach", "gw", NET)
    h1.cli("router", "forward", "gw", "tcp", str(PORT), "b:80", check=True)
    assert until(lambda: "hello-from-b" in _try(lambda: http_in(h1.ns, PORT))), \
        "the forward on h1 does not reach b on h2"
    gateway = h1.json("network", "show", NET)["gateway"]
    assert pings(h2, "b", gateway), "b reaches its gateway, the router's leg on h1"


def _try(fn: Callable[[], str]) -> str:
    try:
        return fn()
    except OSError:
        return ""


def test_the_graph_shows_hosts_the_overlay_and_where_vms_run(
        cluster: dict[str, HostDaemon]) -> None:
    h3 = cluster["h3"]
    topo = h3.json("network", "graph")
    assert {h["name"] for h in topo["hosts"]} >= {"h1", "h2"}
    net = next(n for n in topo["networks"] if n["name"] == NET)
    assert net["home"] == "h1" and sorted(net["hosts"]) == ["h1", "h2"]
    assert {p["vm"]: p["host"] for p in net["ports"]} == {"a": "h1", "b": "h2"}
    text = h3.cli("network", "graph", check=True).stdout
    assert f"overlay vxlan {net['vni']} mtu 1450 on h1 (home), h2" in text, text
    assert "on h2" in text and "cluster hosts" in text
    dot = cluster["h1"].cli("network", "graph", "--format", "dot", check=True).stdout
    assert '"host:h2"' in dot and f"vxlan {net['vni']}" in dot and "runs on" in dot


STREAM = 5001
# b counts out loud over one TCP connection, a line each 0.1 s of its own time
SERVE = (f"((i=0; while :; do i=$((i+1)); echo $i; sleep 0.1; done) | nc -l -p {STREAM}) "
         "</dev/null >/dev/null 2>&1 &")
# a stamps each line it receives with its own clock (a does not move: its clock runs on);
# its nc's input stays open (busybox nc ends at the end of its input)
RECEIVE = ("(sleep 100000 | nc {ip} " + str(STREAM) + " | while read n; do "
           "read up rest </proc/uptime; echo \"$n $up\"; done >/tmp/stream) "
           "</dev/null >/dev/null 2>&1 &")


def _stream(d: HostDaemon) -> list[tuple[int, float]]:
    out = sh(d, "a", "cat /tmp/stream")[1]
    return [(int(n), float(t)) for n, t in (line.split() for line in out.splitlines()
                                            if len(line.split()) == 2)]


def test_a_tcp_stream_survives_its_server_migrating_to_another_host(
        cluster: dict[str, HostDaemon]) -> None:
    """a (on h1) reads a stream from b while b moves h2 -> h3: b keeps its address, the
    connection goes on with nothing lost or repeated, and a saw a pause about as long as
    the migration's downtime."""
    h1, h2, h3 = cluster["h1"], cluster["h2"], cluster["h3"]
    b_ip = h2.client.get("b")["nics"][0]["ip"]
    sh(h2, "b", SERVE)
    sh(h1, "a", RECEIVE.format(ip=b_ip))
    assert until(lambda: len(_stream(h1)) >= 10), "no stream from b"
    res = h1.json("migrate", "b", "--to", "h3")  # asked of a third daemon: forwarded to h2
    moved = _stream(h1)[-1][0]
    assert res["host"] == "h3" and res["state"] == "running", res
    downtime = float(res["migration"]["downtime"])
    assert until(lambda: _stream(h1)[-1][0] >= moved + 20), "the stream stopped after the move"
    got = _stream(h1)
    numbers = [n for n, _ in got]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), \
        "lines lost or repeated: the connection broke"
    assert sh(h1, "a", "pidof nc")[0] == 0, "a's end of the connection is gone"
    gaps = sorted(y[1] - x[1] for x, y in itertools.pairwise(got))
    # the longest pause a saw: b's 0.1 s between lines, the downtime, and the scheduling
    # of two emulated guests on a busy host (a's receiving loop itself, b's first lines)
    print(f"downtime {downtime * 1000:.0f} ms; a's longest pauses {gaps[-3:]} s")
    assert gaps[-1] <= downtime + 0.1 + 2.0, (downtime, gaps[-3:])
    assert h3.client.get("b")["nics"][0]["ip"] == b_ip
    assert until(lambda: pings(h1, "a", "b.corral")), "b's name does not follow it"
    assert until(lambda: [n for n in _links(h2) if n.startswith("crl-")] == [], 15), \
        "h2 still carries the network after its last VM left"
    assert sorted(h1.json("network", "show", NET)["hosts"]) == ["h1", "h3"]


def test_removal_is_refused_while_used_then_leaves_nothing(
        cluster: dict[str, HostDaemon]) -> None:
    h1, h2, h3 = cluster["h1"], cluster["h2"], cluster["h3"]
    res = h3.cli("network", "rm", NET)
    assert res.returncode == 5 and "a (on h1)" in res.stderr and "b (on h3)" in res.stderr, \
        res.stderr
    for f in h1.client.forward_list():
        h1.client.forward_delete(f["router"], f["proto"], f["host_port"])
    h1.client.router_detach("gw", NET)
    h1.client.router_delete("gw")
    h3.client.destroy("b")
    assert until(lambda: _ours(h3) == [], 10), f"h3 kept {_ours(h3)}"
    assert _ours(h1), "the home keeps the network (and its DHCP) until it is removed"
    h1.client.destroy("a")
    h2.cli("network", "rm", NET, check=True)  # asked of another host than the home
    assert until(lambda: all(_ours(h) == [] for h in cluster.values()), 10), \
        {h.name: _ours(h) for h in cluster.values()}
    assert h1.json("network", "list") == []
