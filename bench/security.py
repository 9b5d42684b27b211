"""The cost of remote access, side by side in one run: the same calls through
``corral.Client`` over the unix socket (the local admin) and over TLS with a token (an
operator token, the certificate pinned by fingerprint), each on one warm connection.

    CORRAL_IMAGE_PATH=build/images .venv/bin/python bench/security.py [--reps 60] [--json F]

One ``corral serve --listen 127.0.0.1:PORT`` with a temporary ``CORRAL_HOME`` and one tiny
guest (q35, 256 MiB, 1 vCPU); pause, resume and ``list`` alternate between the two doors in
a rotating order, after a warm-up. "paired" is the median of each repetition's own
difference (TLS minus unix, measured back to back), which a busy host disturbs least. Both
doors go through the same authorization seam (the TLS one also checks the token and its
rate limit, and both write the same audit record). Also shown: a cold call (a new
connection: the TLS handshake included). Target (issue 10): TLS adds under 1 ms to a warm
connection.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from _common import Summary, fmt_summary, ms_since, ratio, render_table, run_benchmark

from corral.api.tls import fingerprint
from corral.client import Client
from corral.errors import CorralError

CORRAL = str(Path(sys.executable).parent / "corral")
VM = "bench-sec"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(home: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CORRAL_HOME": str(home), "CORRAL_SOCKET": str(home / "corral.sock"),
           "CORRAL_LISTEN": f"127.0.0.1:{port}", "CORRAL_API_RATE": "100000",
           "CORRAL_API_BURST": "100000"}
    log = (home / "daemon.log").open("ab")
    proc = subprocess.Popen([CORRAL, "serve"], env=env, stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(CorralError), Client(home / "corral.sock", timeout=5) as c:
            c.host_info()
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise SystemExit(f"the daemon did not start: {(home / 'daemon.log').read_text()[-2000:]}")


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return ms_since(t0)


def measure(local: Client, remote: Client, reps: int) -> dict[str, dict[str, list[float]]]:
    doors = {"unix": local, "tls": remote}
    out: dict[str, dict[str, list[float]]] = {op: {"unix": [], "tls": []}
                                               for op in ("pause", "resume", "list")}
    for _ in range(5):  # connections, code paths and caches warm; discarded
        for c in doors.values():
            c.pause(VM)
            c.resume(VM)
            c.list()
    order = list(doors)
    for rep in range(reps):
        for door in order[rep % 2:] + order[:rep % 2]:  # rotate who goes first
            c = doors[door]
            out["pause"][door].append(_timed(partial(c.pause, VM)))
            out["resume"][door].append(_timed(partial(c.resume, VM)))
            out["list"][door].append(_timed(c.list))
    return out


def cold(home: Path, url: str, token: str, pin: str, reps: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {"unix": [], "tls": []}
    for _ in range(reps):
        for door in ("unix", "tls"):
            t0 = time.perf_counter()
            c = Client(home / "corral.sock") if door == "unix" else \
                Client(url=url, token=token, fingerprint=pin)
            c.list()
            samples[door].append(ms_since(t0))
            c.close()
    return samples


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=60)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="crl-bsec-", dir="/tmp"))
    port = _free_port()
    proc = _start(home, port)
    local = Client(home / "corral.sock", timeout=300)
    remote: Client | None = None
    try:
        token = local.token_create("bench", "operator")["secret"]
        pin = fingerprint((home / "tls" / "server.crt").read_bytes())
        url = f"https://127.0.0.1:{port}"
        remote = Client(url=url, token=token, fingerprint=pin, timeout=300)
        local.create(VM, memory="256M", start=True, wait=True)
        warm = measure(local, remote, args.reps)
        first = cold(home, url, token, pin, max(5, args.reps // 3))
        rows, results = [], {}
        for label, key, data in (("pause (warm)", "pause", warm["pause"]),
                                 ("resume (warm)", "resume", warm["resume"]),
                                 ("list VMs (warm)", "list", warm["list"]),
                                 ("list VMs, new connection", "cold_list", first)):
            u, t = Summary.of(data["unix"]), Summary.of(data["tls"])
            # each repetition ran both doors back to back: their difference is paired, so
            # load that comes and goes on a busy host cancels out
            paired = statistics.median(b - a for a, b in zip(data["unix"], data["tls"],
                                                             strict=True))
            assert u is not None and t is not None
            rows.append([label, fmt_summary(u), fmt_summary(t), ratio(t, u),
                         f"{t.median - u.median:+.2f}", f"{paired:+.2f}"])
            results[key] = {"unix": u.as_dict(), "tls": t.as_dict(), "paired_added": paired}
        print(f"Corral security benchmark: {os.cpu_count()} CPUs, Linux {platform.release()}, "
              f"guest q35 256 MiB 1 vCPU. Median (min-max) ms; warm n={args.reps} per door, "
              f"interleaved; cold n={len(first['unix'])}")
        print(render_table(["operation (ms)", "unix socket", "TLS + token", "TLS/unix",
                            "TLS adds", "paired"], rows))
        added = max(float(results[k]["paired_added"]) for k in ("pause", "resume", "list"))
        verdict = "PASS" if added < 1.0 else "FAIL"
        print(f"\ntarget (from the issue):\n  {verdict}  TLS adds under 1 ms to a warm "
              f"connection: at most {added:+.2f} ms (pause, resume, list; median of the "
              "paired differences)")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
        return 0
    finally:
        with contextlib.suppress(CorralError):
            local.rm(VM)
        local.close()
        if remote is not None:
            remote.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    run_benchmark(main)
