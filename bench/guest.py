"""Guest agent benchmark: exec round trips and file copies through Corral, next to the raw
agent protocol and next to the host's own tools, measured side by side in one run.

    CORRAL_IMAGE_PATH=build/images .venv/bin/python bench/guest.py [--reps 5]
        [--exec-reps 30] [--mib 4] [--json FILE]

The same tiny guest (q35, 256 MiB, 1 vCPU, TCG), twice:

* **Corral**: ``corral.Client`` (one kept-alive connection) against a ``corral serve`` this
  script starts with its own temporary ``CORRAL_HOME``: ``exec(["true"])``,
  ``write_file`` / ``read_file`` (Corral moves files in 1 MiB chunks and checks each copy
  end to end with a ``sha256sum`` run in the guest);
* **raw QGA**: Corral's own QEMU argv (read from the Corral VM's ``/proc/PID/cmdline``)
  started by hand, and a minimal in-process agent client on its socket (one
  ``guest-sync-delimited`` per connection, then plain requests; ``guest-exec-status`` polled
  every 1 ms; ``guest-file-write`` / ``guest-file-read`` in 1 MiB chunks, no checksum);
* **host**: the host's own ``true`` (fork, exec, wait), and the host's own loopback copy:
  the data through a unix socket pair into ``cat > FILE`` on tmpfs, and back out with
  ``cat FILE``.

Each repetition runs every system once, in an order that rotates; one warm-up is discarded.
Numbers are medians (min-max).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _common import become_subreaper, ms_since, render_table, run_benchmark
from _guest_common import RawQemu, Samples, cell, get, interleave, log, tratio
from lifecycle import CorralSystem, image_path

VM = "bench-guest"
GUEST_FILE = "/tmp/bench.bin"

PAIRS = (("corral", "raw"), ("raw", "host"), ("corral", "host"))


def host_true() -> float:
    """fork, exec ``/bin/true``, wait: ms."""
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: exec at once, never return into Python
        try:
            os.execv("/bin/true", ["true"])
        finally:
            os._exit(127)
    _, status = os.waitpid(pid, 0)
    took = ms_since(t0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError("/bin/true failed on the host")
    return took


def host_write(path: Path, data: bytes) -> float:
    """``data`` through a unix socket pair into ``cat > path``: ms."""
    t0 = time.perf_counter()
    ours, theirs = socket.socketpair()
    with ours, path.open("wb") as out:
        proc = subprocess.Popen(["cat"], stdin=theirs.fileno(), stdout=out)
        theirs.close()
        ours.sendall(data)
        ours.shutdown(socket.SHUT_WR)
        if proc.wait() != 0:
            raise RuntimeError("cat failed")
    return ms_since(t0)


def host_read(path: Path, size: int) -> float:
    """``cat path`` into a unix socket pair, read to the end: ms."""
    t0 = time.perf_counter()
    ours, theirs = socket.socketpair()
    with ours:
        proc = subprocess.Popen(["cat", str(path)], stdout=theirs.fileno())
        theirs.close()
        got = 0
        while chunk := ours.recv(1 << 20):
            got += len(chunk)
        if proc.wait() != 0 or got != size:
            raise RuntimeError(f"cat read {got} of {size} bytes")
    return ms_since(t0)


def mib_s(samples: Samples, op: str, system: str, mib: float) -> list[float]:
    return [mib / (ms / 1000) for ms in get(samples, op, system)]


def one(op: str, fn: Callable[[], float]) -> Callable[[], list[tuple[str, float]]]:
    return lambda: [(op, fn())]


def report(samples: Samples, meta: dict[str, Any], mib: int) -> str:
    systems = ("corral", "raw", "host")
    lat_rows = []
    for op, label in (("exec", "exec `true`, round trip"),
                      ("exec_inside", "  of which inside the daemon (guest-exec → exited)"),
                      ("ping", "agent round trip (guest-ping)"),
                      ("sha256", f"sha256sum of the {mib} MiB file in the guest (raw exec)")):
        lat_rows.append([label, *(cell(get(samples, op, s)) for s in systems),
                         *(tratio(samples, op, a, b) for a, b in PAIRS)])
    lat = render_table(["latency (ms)", "Corral", "raw QGA", "host", "Corral/raw",
                        "raw/host", "Corral/host"], lat_rows)
    copy_rows = []
    for op, label in (("write", f"copy {mib} MiB host → guest"),
                      ("read", f"copy {mib} MiB guest → host")):
        copy_rows.append([label, *(cell(mib_s(samples, op, s, mib)) for s in systems),
                          *(tratio(samples, op, a, b) for a, b in PAIRS)])
    for op, label in (("write", f"  the same in ms, {mib} MiB host → guest"),
                      ("read", f"  the same in ms, {mib} MiB guest → host")):
        copy_rows.append([label, *(cell(get(samples, op, s)) for s in systems), "", "", ""])
    copy = render_table(["throughput (MiB/s)", "Corral", "raw QGA", "host loopback",
                         "Corral/raw", "raw/host", "Corral/host"], copy_rows)
    return "\n".join([
        "",
        f"Corral guest agent benchmark: {meta['host']}, {meta['qemu']}, accel {meta['accel']},"
        f" guest q35 256 MiB 1 vCPU. Median (min-max); exec n={meta['exec_reps']}, copies "
        f"n={meta['reps']}, after 1 warm-up",
        f"raw QEMU argv: Corral's own ({meta['argv']}); raw QGA: one sync per connection, "
        "guest-exec-status polled every 1 ms",
        "Corral: corral.Client, one kept-alive connection; a sync before every agent command, "
        "exec status polled from 1 ms doubling to 50 ms, every copy checked with sha256sum in "
        "the guest",
        f"host: fork+exec+wait of /bin/true; copy = unix socket pair + cat to/from tmpfs "
        f"({meta['host_dir']})",
        "",
        lat,
        "",
        copy,
        "ratios are ratios of median times (above 1: slower), for the throughput rows too",
        f"\n(total {meta['seconds']} s; load average {meta['load'][0]:.2f} at start, "
        f"{meta['load'][1]:.2f} at end)",
    ])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=5, help="file copy repetitions (5)")
    p.add_argument("--exec-reps", type=int, default=30, help="exec repetitions (30)")
    p.add_argument("--mib", type=int, default=4, help="size of the copied file in MiB (4)")
    p.add_argument("--json", type=Path, help="write the raw samples (ms) to this file")
    args = p.parse_args(argv)
    if min(args.reps, args.exec_reps, args.mib) < 1:
        p.error("repetitions and size must be at least 1")
    return args



def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    images = image_path()
    os.environ["CORRAL_IMAGE_PATH"] = images
    become_subreaper()
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True,
                          check=False).stdout.split("\n")[0]
    t_start = time.monotonic()
    load0 = os.getloadavg()[0]
    token = secrets.token_hex(3)
    ws = Path(f"/tmp/crg-{token}")
    shm = Path(f"/dev/shm/crg-{token}")
    samples: Samples = {}
    meta: dict[str, Any] = {"host": f"{os.cpu_count()} CPUs, Linux {platform.release()}",
                               "qemu": qemu, "reps": args.reps, "exec_reps": args.exec_reps,
                               "mib": args.mib, "host_dir": str(shm)}
    with contextlib.ExitStack() as stack:
        ws.mkdir()
        stack.callback(shutil.rmtree, ws, True)
        shm.mkdir()
        stack.callback(shutil.rmtree, shm, True)
        corral = CorralSystem(ws / "c", images)
        stack.callback(corral.close)
        log(f"starting corral serve (CORRAL_HOME={corral.home})")
        corral.start_daemon()
        client = corral.client
        raw = RawQemu(ws / "r")
        stack.callback(raw.close)
        log("booting the Corral guest and the raw guest")
        client.create(VM, memory="256M")
        client.start(VM, wait=True)
        meta["argv"] = raw.learn("vm", corral.home, VM, int(client.get(VM)["pid"]))
        meta["accel"] = raw.option("vm", "-accel")
        rvm, _ = raw.boot("vm")
        agent = rvm.agent
        assert agent is not None
        time.sleep(2)  # both guests settle (DHCP, first page faults)

        def corral_exec() -> list[tuple[str, float]]:
            t0 = time.perf_counter()
            res = client.exec(VM, ["true"])
            took = ms_since(t0)
            if res["exitcode"] != 0:
                raise RuntimeError(f"true exited {res['exitcode']} in the Corral guest")
            return [("exec", took), ("exec_inside", res["seconds"] * 1000)]

        def raw_exec() -> float:
            t0 = time.perf_counter()
            st = agent.run(["true"])
            took = ms_since(t0)
            if st.get("exitcode") != 0:
                raise RuntimeError(f"true exited {st.get('exitcode')} in the raw guest")
            return took

        def raw_ping() -> float:
            t0 = time.perf_counter()
            agent.execute("guest-ping")
            return ms_since(t0)

        log(f"exec round trips, {args.exec_reps} each")
        interleave([("corral", corral_exec), ("raw", one("exec", raw_exec)),
                    ("host", one("exec", host_true)), ("raw", one("ping", raw_ping))],
                   args.exec_reps, samples, "exec")

        data = os.urandom(args.mib << 20)
        host_file = shm / "bench.bin"

        def corral_write() -> float:
            t0 = time.perf_counter()
            client.write_file(VM, GUEST_FILE, data)
            return ms_since(t0)

        def corral_read() -> float:
            t0 = time.perf_counter()
            got = client.read_file(VM, GUEST_FILE)
            took = ms_since(t0)
            if got != data:
                raise RuntimeError("Corral read back other bytes than it wrote")
            return took

        def raw_write() -> float:
            t0 = time.perf_counter()
            agent.write_file(GUEST_FILE, data)
            return ms_since(t0)

        def raw_read() -> float:
            t0 = time.perf_counter()
            got = agent.read_file(GUEST_FILE)
            took = ms_since(t0)
            if got != data:
                raise RuntimeError("raw QGA read back other bytes than it wrote")
            return took

        def raw_sha() -> float:
            t0 = time.perf_counter()
            agent.run(["sha256sum", GUEST_FILE])
            return ms_since(t0)

        def host_w() -> float:
            return host_write(host_file, data)

        def host_r() -> float:
            return host_read(host_file, len(data))

        log(f"file copies of {args.mib} MiB, {args.reps} each way")
        # a write and then a read of the same system back to back: the read has a file
        interleave([("corral", one("write", corral_write)), ("corral", one("read", corral_read)),
                    ("raw", one("write", raw_write)), ("raw", one("read", raw_read)),
                    ("raw", one("sha256", raw_sha)),
                    ("host", one("write", host_w)), ("host", one("read", host_r))],
                   args.reps, samples, "copies")
        meta["load"] = (load0, os.getloadavg()[0])
    meta["seconds"] = round(time.monotonic() - t_start, 1)
    print(report(samples, meta, args.mib))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "samples_ms": samples}, indent=2) + "\n")
        log(f"raw samples written to {args.json}")
    return 0


if __name__ == "__main__":
    run_benchmark(main)
