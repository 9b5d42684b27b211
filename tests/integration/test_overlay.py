"""VXLAN overlays on real Linux objects (root; no VMs): two network namespaces stand in for
two hosts joined by an underlay link; each has the network's bridge with a VXLAN port, and a
namespace standing in for a guest on that bridge. The guests reach each other across the
hosts, and only through the overlay."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest

from corral.host.network import links, overlay

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="needs root and ip")
UNDERLAY = {1: IPv4Address("192.168.77.1"), 2: IPv4Address("192.168.77.2")}
GUEST = {1: "10.99.0.1", 2: "10.99.0.2"}


def ip(*args: str, netns: str | None = None, check: bool = True
       ) -> subprocess.CompletedProcess[str]:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.run([*prefix, *args], capture_output=True, text=True, check=check)


def tcp_reaches(src_ns: str, dst_ns: str, dst: str, timeout: float = 2.0) -> bool:
    """Whether a TCP connection from namespace ``src_ns`` reaches a listener at ``dst`` in
    ``dst_ns`` (sockets keep the namespace they were made in)."""
    server = links.run_in(dst_ns, lambda: socket.create_server((dst, 7000)))
    try:
        def connect() -> socket.socket:
            c = socket.socket()
            c.settimeout(timeout)
            return c
        client = links.run_in(src_ns, connect)
        with client:
            try:
                client.connect((dst, 7000))
            except OSError:
                return False
            client.sendall(b"over the overlay")
            conn, _ = server.accept()
            with conn:
                return conn.recv(64) == b"over the overlay"
    finally:
        server.close()


@pytest.fixture
def hosts() -> Iterator[dict[str, str]]:
    tag = secrets.token_hex(2)
    names = {f"h{i}": f"corral-t{tag}h{i}" for i in (1, 2)}
    names |= {f"g{i}": f"corral-t{tag}g{i}" for i in (1, 2)}
    for ns in names.values():
        links.add_netns(ns)
    try:
        # the underlay: one veth between the two hosts
        ip("ip", "link", "add", "crl-und", "netns", names["h1"], "type", "veth",
           "peer", "name", "crl-und", "netns", names["h2"])
        for i in (1, 2):
            h = names[f"h{i}"]
            ip("ip", "addr", "add", f"{UNDERLAY[i]}/24", "dev", "crl-und", netns=h)
            ip("ip", "link", "set", "crl-und", "up", netns=h)
        yield names
    finally:
        for ns in names.values():
            links.delete_netns(ns)
    left = {p.name for p in Path("/run/netns").iterdir()} & set(names.values())
    assert left == set()


def test_guests_on_two_hosts_reach_each_other_over_vxlan(hosts: dict[str, str]) -> None:
    for i in (1, 2):
        h = hosts[f"h{i}"]
        assert links.add_bridge("crl-br-ov", netns=h)
        assert overlay.add_vxlan("crl-vxov", 4242, UNDERLAY[i], "crl-br-ov", netns=h)
        assert not overlay.add_vxlan("crl-vxov", 4242, UNDERLAY[i], "crl-br-ov", netns=h)
        links.add_veth("crl-tg", hosts[f"g{i}"], netns=h, bridge="crl-br-ov",
                       peer_address=IPv4Interface(f"{GUEST[i]}/24"))
    g1 = hosts["g1"]
    # no peers yet: nothing floods across, so the first ARP finds nobody
    assert not tcp_reaches(g1, hosts["g2"], GUEST[2], timeout=0.5)
    for i, other in ((1, 2), (2, 1)):
        overlay.set_peers("crl-vxov", [UNDERLAY[other]], netns=hosts[f"h{i}"])
        assert overlay.peers("crl-vxov", hosts[f"h{i}"]) == {UNDERLAY[other]}
    assert tcp_reaches(g1, hosts["g2"], GUEST[2])
    # the traffic went through the VXLAN port: its counters moved
    assert links.counters("crl-vxov", hosts["h1"]).tx_packets >= 3
    # the MTU leaves room for VXLAN's headers
    mtu = ip("cat", "/sys/class/net/crl-vxov/mtu", netns=hosts["h1"]).stdout.strip()
    assert int(mtu) == 1500 - overlay.OVERHEAD
    overlay.set_peers("crl-vxov", [], netns=hosts["h1"])
    assert overlay.peers("crl-vxov", hosts["h1"]) == set()
