"""Cluster benchmark: what the PostgreSQL store and forwarding cost per operation, next to
one host on SQLite, interleaved in one run.

    .venv/bin/python bench/cluster.py [--n 30] [--vms 100] [--json]

Runs as root with real daemons and real QEMU: PostgreSQL is started as the ``postgres`` user
on a unix socket in a temporary directory; three ``corral serve``: one alone on SQLite
(``single``) and two in a cluster (``c1``, ``c2``, TLS API on 127.0.0.1). Every call goes
through ``corral.Client`` on a daemon's unix socket:

* ``pause``/``resume`` of a running tiny guest: on ``single``; on ``c1``, where it runs
  (local, PostgreSQL store); and sent to ``c2`` (forwarded to ``c1`` over TLS with the peer
  token). Target: a forwarded pause under 2x a local one (single host).
* ``create`` (define, no boot): on ``single``; in the cluster, placed on the host asked.
* ``list`` with ``--vms`` VMs: on ``single``; in the cluster, half of them on each host.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corral.client import Client

PG_BIN = Path("/usr/lib/postgresql/15/bin")
CORRAL = str(Path(sys.executable).parent / "corral")


class Env:
    """PostgreSQL and three daemons under one temporary directory."""

    def __init__(self, image_path: str) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="crl-bench-", dir="/tmp"))
        self.tmp.chmod(0o755)
        self.image_path = image_path
        self.procs: list[subprocess.Popen[bytes]] = []
        self.clients: dict[str, Client] = {}

    def postgres(self) -> str:
        pg = self.tmp / "pg"
        pg.mkdir()
        shutil.chown(pg, "postgres")
        as_pg = ["runuser", "-u", "postgres", "--"]
        subprocess.run([*as_pg, str(PG_BIN / "initdb"), "-D", str(pg / "data"), "-A",
                        "trust"], check=True, capture_output=True)
        subprocess.run([*as_pg, str(PG_BIN / "pg_ctl"), "-D", str(pg / "data"), "-w", "-o",
                        f"-k {pg} -c listen_addresses=''", "-l", str(pg / "log"), "start"],
                       check=True, capture_output=True)
        return f"postgresql://postgres@/postgres?host={pg}"

    def daemon(self, name: str, **env: str) -> Client:
        home = self.tmp / name
        home.mkdir()
        sock = home / "corral.sock"
        full = {**os.environ, "CORRAL_HOME": str(home), "CORRAL_SOCKET": str(sock),
                "CORRAL_IMAGE_PATH": self.image_path, **env}
        with (home / "daemon.log").open("ab") as log:
            self.procs.append(subprocess.Popen([CORRAL, "serve"], env=full, stdout=log,
                                               stderr=log, stdin=subprocess.DEVNULL))
        client = Client(sock, timeout=180)
        for _ in range(300):
            try:
                client.host_info()
                break
            except Exception:
                time.sleep(0.1)
        self.clients[name] = client
        return client

    def close(self) -> None:
        for name, c in self.clients.items():
            try:
                for vm in c.list(**({"host": name} if name != "single" else {})):
                    c.rm(vm["name"])
            except Exception as err:
                print(f"cleanup of {name}: {err}", file=sys.stderr)
            c.close()
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
            p.wait(60)
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D",
                        str(self.tmp / "pg" / "data"), "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(self.tmp, ignore_errors=True)


def timed(f: Callable[[int], Any], n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        f(i)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def run(n: int, vms: int, image_path: str) -> dict[str, dict[str, list[float]]]:
    env = Env(image_path)
    try:
        url = env.postgres()
        single = env.daemon("single")
        c1 = env.daemon("c1", CORRAL_CLUSTER=url, CORRAL_HOST_NAME="c1",
                        CORRAL_LISTEN="127.0.0.1:17441")
        token = c1.join_token()["token"]
        c2 = env.daemon("c2", CORRAL_CLUSTER=url, CORRAL_HOST_NAME="c2",
                        CORRAL_LISTEN="127.0.0.1:17442", CORRAL_JOIN_TOKEN=token)
        single.create("p", start=True, wait=True, memory="128M")
        c1.create("p", start=True, wait=True, memory="128M", host="c1")
        res: dict[str, dict[str, list[float]]] = {
            "pause": {}, "resume": {}, "create (define)": {}, f"list ({vms} VMs)": {}}
        for _ in range(3):  # warm every path (and the forwarding pool)
            for c in (single, c1, c2):
                c.pause("p")
                c.resume("p")
        sides = {"single": single, "cluster, local": c1, "cluster, forwarded": c2}
        for side in sides:  # interleaved by repetition
            res["pause"].setdefault(side, [])
            res["resume"].setdefault(side, [])
        for _ in range(n):
            for side, c in sides.items():
                res["pause"][side] += timed(lambda _i, c=c: c.pause("p"), 1)
                res["resume"][side] += timed(lambda _i, c=c: c.resume("p"), 1)
        res["create (define)"]["single"] = timed(lambda i: single.create(f"d{i}"), n)
        res["create (define)"]["cluster, local"] = timed(
            lambda i: c1.create(f"d{i}", host="c1"), n)
        res["create (define)"]["cluster, placed on the other host"] = timed(
            lambda i: c1.create(f"e{i}", host="c2"), n)
        for i in range(vms - 2 * n - 1):
            single.create(f"x{i}")
        for i in range(vms - 2 * n - 1):
            c1.create(f"x{i}", host="c1" if i % 2 else "c2")
        res[f"list ({vms} VMs)"]["single"] = timed(lambda _i: single.list(), n)
        res[f"list ({vms} VMs)"]["cluster, local"] = timed(lambda _i: c1.list(), n)
        return res
    finally:
        env.close()


def _fmt(values: list[float] | None) -> str:
    if not values:
        return "—"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=30, help="repetitions of each operation")
    ap.add_argument("--vms", type=int, default=100, help="VMs listed")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    image_path = os.environ.get("CORRAL_IMAGE_PATH", "build/images")
    res = run(args.n, args.vms, str(Path(image_path).absolute()))
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"Cluster benchmark: real daemons and QEMU (TCG), {os.cpu_count()} CPUs; "
          f"corral.Client on each daemon's unix socket; median (min-max) of n={args.n}, ms")
    for op, sides in res.items():
        base = statistics.median(sides["single"])
        print(f"\n{op}")
        for side, values in sides.items():
            print(f"  {side:<36} {_fmt(values):>24}  {statistics.median(values) / base:5.2f}x")
    fwd = statistics.median(res["pause"]["cluster, forwarded"])
    local = statistics.median(res["pause"]["single"])
    print(f"\ntarget: a forwarded pause under 2x a local one: {fwd:.2f} / {local:.2f} ms = "
          f"{fwd / local:.2f}x  {'PASS' if fwd < 2 * local else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
