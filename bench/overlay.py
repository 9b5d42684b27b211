"""Overlay benchmark: VM-to-VM TCP throughput across two hosts over a VXLAN network, next to
the same transfer between two VMs on one host's bridge, in one run.

    CORRAL_IMAGE_PATH=build/images .venv/bin/python bench/overlay.py [--mb 32] [--reps 3]

Runs as root. Two hosts are network namespaces on one underlay bridge (as in the cluster
tests), each with its own ``corral serve`` in one cluster on a PostgreSQL started here. One
cluster network, made on h1; three tiny guests on it: ``rx`` and ``near`` on h1, ``far`` on
h2. ``near`` -> ``rx`` crosses h1's bridge only; ``far`` -> ``rx`` crosses h2's bridge, the
VXLAN ports of both hosts and the underlay. Same receiver, same transfer (``dd | nc``, timed
by the receiver from its first byte to its last, see bench/network.py), the two paths taking
turns so that a change in the host's load falls on both alike. Under TCG the guests' CPUs
bound the figures; the ratio is what the overlay costs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("CORRAL_TEST_UNDERLAY", "crlb:247")  # names apart from the tests'
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import become_subreaper, render_table
from network import GUEST, Ends, corral_end, interleaved, wait_for_address
from tests.integration.cluster_hosts import Postgres, Underlay

from corral.client import Client
from corral.config import Paths

CORRAL = str(Path(sys.executable).parent / "corral")
NET, SUBNET = "bov", "10.246.9.0/24"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Host:
    def __init__(self, name: str, ns: str, address: str, url: str, images: str,
                 **env: str) -> None:
        self.name, self.ns = name, ns
        self.home = Path(tempfile.mkdtemp(prefix=f"crl-b{name}-", dir="/tmp"))
        self.env = {**os.environ, "CORRAL_HOME": str(self.home), "CORRAL_CLUSTER": url,
                    "CORRAL_HOST_NAME": name, "CORRAL_LISTEN": f"{address}:7443",
                    "CORRAL_IMAGE_PATH": images, "CORRAL_HEARTBEAT": "0.5",
                    "CORRAL_SOCKET": str(self.home / "corral.sock"), **env}
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, CORRAL, "serve"],
                                     env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.client = Client(self.home / "corral.sock", timeout=180)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.client.host_info()
                break
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"the daemon of {name} did not come up") from None
                time.sleep(0.2)

    def cli(self, *args: str) -> Any:
        res = subprocess.run([CORRAL, *args, "--json"], env=self.env, capture_output=True,
                             text=True, timeout=300)
        if res.returncode != 0:
            raise RuntimeError(f"corral {' '.join(args)}: {res.stderr}")
        return json.loads(res.stdout)

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)
        shutil.rmtree(self.home, ignore_errors=True)
        shutil.rmtree(Paths(self.home).outside, ignore_errors=True)


@contextlib.contextmanager
def two_hosts(images: str) -> Iterator[dict[str, Host]]:
    pg, under = Postgres(), Underlay()
    hosts: dict[str, Host] = {}
    try:
        pg.init()
        under.up()
        for n in (1, 2):
            ns, address = under.add(n)
            token = {} if n == 1 else {"CORRAL_JOIN_TOKEN":
                                       hosts["h1"].cli("cluster", "token")["token"]}
            hosts[f"h{n}"] = Host(f"h{n}", ns, address, pg.url, images, **token)
        yield hosts
    finally:
        with contextlib.suppress(Exception):
            for vm in hosts["h1"].client.list():
                hosts["h1"].client.destroy(vm["name"])
            hosts["h1"].client.network_delete(NET)
            time.sleep(2)  # the home removes its part on its next heartbeat
        for h in hosts.values():
            h.stop()
        under.down()
        pg.remove()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=int, default=32, help="MB per transfer (default 32)")
    p.add_argument("--reps", type=int, default=3, help="transfers per path (default 3)")
    args = p.parse_args(argv)
    images = os.environ.get("CORRAL_IMAGE_PATH") or str(Path(__file__).parents[1] / "build"
                                                         / "images")
    become_subreaper()
    with two_hosts(images) as hosts:
        h1 = hosts["h1"]
        h1.cli("network", "create", NET, "--subnet", SUBNET)
        where = {"rx": "h1", "near": "h1", "far": "h2"}
        for vm, host in where.items():
            h1.cli("run", vm, "--host", host, "--memory", "128M", "--nic", NET)
        ips = {vm: hosts[h].client.get(vm)["nics"][0]["ip"] for vm, h in where.items()}
        for vm, h in where.items():
            wait_for_address(corral_end(hosts[h].client, vm), ips[vm])
        rx = corral_end(h1.client, "rx")

        def path(sender: str) -> Ends:
            return (rx, corral_end(hosts[where[sender]].client, sender), ips["rx"],
                    lambda: rx("cat /tmp/rx 2>/dev/null"))
        log("three guests up; the two paths take turns")
        rates = interleaved({"one host, one bridge": (path("near"), GUEST),
                             "two hosts, VXLAN": (path("far"), GUEST)}, args.mb, args.reps)
        mtu = corral_end(hosts["h2"].client, "far")("cat /sys/class/net/eth0/mtu").strip()
    bridge = statistics.median(rates["one host, one bridge"])
    rows = [[name, f"{statistics.median(r):.2f} ({min(r):.2f}-{max(r):.2f})",
             f"{statistics.median(r) / bridge:.2f}x"] for name, r in rates.items()]
    print(f"\nVM-to-VM TCP throughput, {args.mb} MB per transfer, median of {args.reps} "
          f"(min-max), {os.cpu_count()} host CPUs, guests under TCG, guest MTU {mtu}\n")
    print(render_table(["path", "MB/s", "vs one bridge"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
