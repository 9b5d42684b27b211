"""Network benchmark: TCP throughput through Corral's virtual networks, next to the kernel's
own speed and next to raw QEMU guests wired by hand.

    CORRAL_IMAGE_PATH=build/images .venv/bin/python bench/network.py [--mb 32] [--reps 3]

The same transfer every time: ``dd if=/dev/zero bs=64k`` piped into busybox ``nc`` on one
side, busybox ``nc -l`` on the other, one TCP connection of ``--mb`` MB. The receiver times it
from its first byte to its last (``/proc/uptime`` in a guest, ``date +%s.%N`` on the host), so
neither the guest agent nor the connection set-up is in the figure. Four paths:

* **veth**: two host network namespaces joined by a veth pair: the kernel's own speed;
* **raw QEMU**: two tiny guests started by hand with Corral's own QEMU command line, their
  taps on a bridge this script makes, addresses set by hand: what QEMU gives without Corral;
* **corral switch**: two Corral VMs on one Corral network (bridge, anti-spoofing and firewall
  tables, dnsmasq);
* **corral router**: two Corral VMs on two networks joined by a Corral router (one more veth
  pair each way and IP forwarding in the router's namespace).

The veth pair is measured alone; the raw and Corral guests all run together and their
transfers take turns (the order rotating each round), so a change in the host's load falls
on every path alike. Under TCG (no KVM here) the guests' emulated CPUs bound the throughput,
far below the veth figure: the column that says whether Corral costs anything is "vs raw".
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from _common import LineSocket, agent_sync, become_subreaper, kill_and_reap, render_table

from corral.client import Client
from corral.config import Paths
from corral.domain.specs import NicSpec, VMSpec
from corral.engine.qemu.argv import RunPaths, build
from corral.errors import CorralError
from corral.images import catalog

ROOT = Path(__file__).resolve().parents[1]
CORRAL = str(Path(sys.executable).parent / "corral")
PORT = 5001
#: the receiver: the time of its first byte (read alone) and of its last, and the count
#: of the bytes in between, into OUT; sleep keeps nc's stdin open (at EOF it would hang up)
RECEIVER = ("rm -f {out}; (sleep 600 | {bb}nc -l -p {port} | {{ "
            "{bb}dd bs=1 count=1 >/dev/null 2>&1; a=$({clock}); n=$({bb}wc -c); b=$({clock}); "
            "echo \"$a $b $n\" >{out}; }}) >/dev/null 2>&1 </dev/null &")
# retried while the listener is not up yet (a loaded host can take longer than the pause)
SENDER = ("for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do "
          "{bb}dd if=/dev/zero bs=65536 count={blocks} 2>/dev/null | {bb}nc {ip} {port} "
          "&& break; sleep 0.5; done")
GUEST = {"bb": "", "clock": "cut -d' ' -f1 /proc/uptime", "out": "/tmp/rx"}

Run = Callable[[str], str]  # run a shell script on one end, return its output
Ends = tuple[Run, Run, str, Callable[[], str]]  # receiver, sender, its address, result


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def transfer(rx: Run, tx: Run, ip: str, mb: int, read: Callable[[], str],
             names: dict[str, str]) -> float:
    """One transfer of ``mb`` MB from ``tx`` to ``rx`` (at ``ip``); MB/s as the receiver saw."""
    rx(RECEIVER.format(port=PORT, **names))
    time.sleep(0.3)  # the listener is up
    tx(SENDER.format(blocks=mb * 16, ip=ip, port=PORT, **names))
    deadline = time.monotonic() + 60
    while not (out := read().strip()):
        if time.monotonic() > deadline:
            raise RuntimeError("the receiver never finished")
        time.sleep(0.2)
    start, end, count = out.split()
    got = int(count) + 1
    if got < mb << 20:
        raise RuntimeError(f"the receiver got {got} of {mb << 20} bytes")
    return got / (1 << 20) / (float(end) - float(start))


# ----- the kernel's own speed: two namespaces, one veth pair --------------------------------

@contextlib.contextmanager
def veth_pair(tag: str, out: Path) -> Iterator[Ends]:
    a, b = f"bnch-a{tag}", f"bnch-b{tag}"
    try:
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
        sh("ip", "link", "add", "bnch-va", "netns", a, "type", "veth", "peer", "bnch-vb",
           "netns", b)
        for ns, dev, ip in ((a, "bnch-va", "10.250.0.1/24"), (b, "bnch-vb", "10.250.0.2/24")):
            sh("ip", "-n", ns, "addr", "add", ip, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")

        def run_in(ns: str) -> Run:
            return lambda script: sh("ip", "netns", "exec", ns, "sh", "-c", script)
        yield run_in(b), run_in(a), "10.250.0.2", lambda: out.read_text() if out.exists() else ""
    finally:
        for ns in (a, b):
            for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                      text=True).stdout.split():
                kill_and_reap(int(pid))
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        out.unlink(missing_ok=True)


# ----- raw QEMU: Corral's command line, taps on a bridge made by hand -----------------------

def agent_exec(path: Path, script: str, timeout: float = 120) -> str:
    """Run ``sh -c script`` in a guest through its agent socket; its stdout."""
    agent_sync(path, timeout=30)
    conn = LineSocket(path, timeout)
    try:
        def call(command: str, args: dict[str, object]) -> dict[str, object]:
            conn.send(json.dumps({"execute": command, "arguments": args}).encode() + b"\n")
            while (msg := conn.read_json(time.perf_counter() + timeout)) is not None:
                if "return" in msg:
                    return dict(msg["return"])
                if "error" in msg:
                    raise RuntimeError(f"{command}: {msg['error']}")
            raise TimeoutError(command)
        pid = call("guest-exec", {"path": "sh", "arg": ["-c", script],
                                  "capture-output": True})["pid"]
        deadline = time.monotonic() + timeout
        while not (status := call("guest-exec-status", {"pid": pid})).get("exited"):
            if time.monotonic() > deadline:
                raise TimeoutError(script)
            time.sleep(0.05)
        return base64.b64decode(str(status.get("out-data", ""))).decode(errors="replace")
    finally:
        conn.close()


def raw_end(agent: Path) -> Run:
    return lambda script: agent_exec(agent, script)


@contextlib.contextmanager
def raw_pair(ws: Path, images: str) -> Iterator[Ends]:
    paths = Paths(ws / "home")
    os.environ["CORRAL_IMAGE_PATH"] = images
    image = catalog.resolve(paths, "tiny")
    pids: list[int] = []
    runs: list[Path] = []
    try:
        sh("ip", "link", "add", "bnch-br", "type", "bridge")
        sh("ip", "link", "set", "bnch-br", "up")
        for i in (0, 1):
            tap = f"bnch-t{i}"
            sh("ip", "tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr")
            sh("ip", "link", "set", tap, "master", "bnch-br", "up")
            run = RunPaths(ws / f"raw{i}")
            run.dir.mkdir(parents=True)
            spec = VMSpec(name=f"bnch{i}", image="tiny", cpus=1, memory_bytes=256 << 20,
                          kernel=str(image.kernel), initrd=str(image.initrd),
                          cmdline=image.cmdline, machine="q35", cpu_model="max", disks=[],
                          nics=[NicSpec(mode="network", mac=f"52:54:00:be:0c:0{i}",
                                        ifname=tap)])
            subprocess.run([*build(spec, run, run.dir / "serial.log", "tcg"), "-daemonize",
                            "-pidfile", str(run.pidfile)], check=True, capture_output=True)
            pids.append(int(run.pidfile.read_text()))
            runs.append(run.dir)
        ends = [raw_end(run_dir / "qga.sock") for run_dir in runs]
        # no DHCP server here: stop the client, then by hand. Only once the client is gone:
        # a TERM that lands while it runs its script's 'deconfig' is seen after it, and that
        # flushed an address added meanwhile (the first transfer then never arrived)
        for i, end in enumerate(ends):
            end("while [ ! -s /run/udhcpc.eth0.pid ]; do sleep 0.1; done; "
                "p=$(cat /run/udhcpc.eth0.pid); kill $p; "
                "while kill -0 $p 2>/dev/null; do sleep 0.1; done; "
                f"ip addr add 10.251.0.{i + 1}/24 dev eth0")
        yield ends[1], ends[0], "10.251.0.2", lambda: ends[1]("cat /tmp/rx 2>/dev/null")
    finally:
        for pid in pids:
            kill_and_reap(pid)
        for link in ("bnch-t0", "bnch-t1", "bnch-br"):
            subprocess.run(["ip", "link", "del", link], capture_output=True)


# ----- Corral ---------------------------------------------------------------------------------

@contextlib.contextmanager
def corral_daemon(ws: Path, images: str) -> Iterator[Client]:
    home = ws / "corral"
    home.mkdir(mode=0o711)
    env = {**os.environ, "CORRAL_HOME": str(home), "CORRAL_IMAGE_PATH": images,
           "CORRAL_SOCKET": str(home / "corral.sock")}
    with (home / "daemon.log").open("ab") as out:
        proc = subprocess.Popen([CORRAL, "serve"], env=env, stdout=out, stderr=out,
                                stdin=subprocess.DEVNULL)
    client = Client(home / "corral.sock", timeout=180)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client.host_info()
                break
            except CorralError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield client
    finally:
        with contextlib.suppress(CorralError):
            for vm in client.list():
                client.destroy(vm["name"])
            for r in client.router_list():
                for leg in r["networks"]:
                    client.router_detach(r["name"], leg["network"])
                client.router_delete(r["name"])
            for n in client.network_list():
                client.network_delete(n["name"])
        client.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def corral_end(c: Client, vm: str) -> Run:
    def run(script: str) -> str:
        res = c.exec(vm, ["sh", "-c", script], timeout=120)
        return str(res["stdout"].decode(errors="replace"))
    return run


def wait_for_address(run: Run, ip: str) -> None:
    deadline = time.monotonic() + 30
    while ip not in run("ip -4 -o addr show dev eth0"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no address {ip} in the guest")
        time.sleep(0.2)


def interleaved(paths: dict[str, tuple[Ends, dict[str, str]]], mb: int, reps: int
                ) -> dict[str, list[float]]:
    """``reps`` transfers on each path, the paths taking turns (the order rotating each
    round) so that a change in the host's load falls on all of them alike."""
    rates: dict[str, list[float]] = {name: [] for name in paths}
    for name, ((rx, tx, ip, read), names) in paths.items():
        log(f"{name}: warm-up")
        transfer(rx, tx, ip, min(mb, 4), read, names)  # warm-up: ARP, TCP, caches
    order = list(paths)
    for rep in range(reps):
        for name in order[rep % len(order):] + order[:rep % len(order)]:
            (rx, tx, ip, read), names = paths[name]
            rates[name].append(transfer(rx, tx, ip, mb, read, names))
            log(f"{name}: {rates[name][-1]:.1f} MB/s")
    return rates


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=int, default=32, help="MB per transfer (default 32)")
    p.add_argument("--reps", type=int, default=3, help="transfers per path (default 3)")
    args = p.parse_args(argv)
    images = os.environ.get("CORRAL_IMAGE_PATH") or str(ROOT / "build" / "images")
    become_subreaper()
    ws = Path(f"/tmp/bnch-{secrets.token_hex(3)}")
    ws.mkdir(mode=0o711)
    results: dict[str, list[float]] = {}
    try:
        out = ws / "veth.rx"
        host = {"bb": "busybox ", "clock": "date +%s.%N", "out": str(out)}
        with veth_pair(ws.name[-4:], out) as ends:  # alone: no guest competes for the CPUs
            results |= interleaved({"veth, two namespaces": (ends, host)}, args.mb, args.reps)
        with raw_pair(ws, images) as raw, corral_daemon(ws, images) as c:
            c.network_create("blan", "10.252.0.0/24")
            c.network_create("bdmz", "10.253.0.0/24")
            c.router_create("bgw")
            c.router_attach("bgw", "blan")
            c.router_attach("bgw", "bdmz")
            for vm, net in (("n1", "blan"), ("n2", "blan"), ("n3", "bdmz")):
                c.create(vm, start=True, wait=True, nics=[{"network": net}])
            ips = {vm: c.get(vm)["nics"][0]["ip"] for vm in ("n1", "n2", "n3")}
            for vm, ip in ips.items():
                wait_for_address(corral_end(c, vm), ip)

            def to(vm: str) -> Ends:
                return (corral_end(c, vm), corral_end(c, "n1"), ips[vm],
                        lambda: corral_end(c, vm)("cat /tmp/rx 2>/dev/null"))
            log("raw and Corral guests up; transfers take turns")
            results |= interleaved({"raw QEMU, taps on a bridge": (raw, GUEST),
                                    "corral, one network": (to("n2"), GUEST),
                                    "corral, across a router": (to("n3"), GUEST)},
                                   args.mb, args.reps)
    finally:
        shutil.rmtree(ws, ignore_errors=True)
    veth = statistics.median(results["veth, two namespaces"])
    raw_rate = statistics.median(results["raw QEMU, taps on a bridge"])
    rows = [[name, f"{statistics.median(r):.1f} ({min(r):.1f}-{max(r):.1f})",
             f"{statistics.median(r) / veth:.3f}x", f"{statistics.median(r) / raw_rate:.2f}x"]
            for name, r in results.items()]
    print(f"\nTCP throughput, {args.mb} MB per transfer, median of {args.reps} (min-max), "
          f"{os.cpu_count()} host CPUs, guests under TCG\n")
    print(render_table(["path", "MB/s", "vs veth", "vs raw"], rows))
    print("\nUnder TCG the guests' emulated CPUs bound throughput (the veth figure is the "
          "kernel's ceiling);\n'vs raw' is what Corral's switch and router cost next to "
          "QEMU guests on a bare bridge.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
