"""Cluster benchmark: what the PostgreSQL store and cross-host placement cost per operation,
next to one host on SQLite, interleaved in one run.

    .venv/bin/python bench/cluster.py [--n 30] [--vms 100] [--json]

Runs as root (PostgreSQL is started as the ``postgres`` user on a unix socket in a
temporary directory). Both sides drive the service in this process on the fake engine
(:mod:`corral.engine.fake`), so the figures are the store's and the cluster's own cost, not
QEMU's: a define (``create``), a create that starts (``run``), ``pause``/``resume``, ``list``
with ``--vms`` VMs, and, in the cluster only, a ``run`` placed on the other host (an
assignment written, claimed by that host's daemon, carried out and answered) and a ``show``
of a VM of another host. Forwarded operations are not measured: forwarding is not built.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _postgres(tmp: Path) -> str:
    pg = tmp / "pg"
    pg.mkdir()
    shutil.chown(pg, "postgres")
    tmp.chmod(0o755)
    as_pg = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_pg, str(PG_BIN / "initdb"), "-D", str(pg / "data"), "-A", "trust"],
                   check=True, capture_output=True)
    subprocess.run([*as_pg, str(PG_BIN / "pg_ctl"), "-D", str(pg / "data"), "-w", "-o",
                    f"-k {pg} -c listen_addresses=''", "-l", str(pg / "log"), "start"],
                   check=True, capture_output=True)
    return f"postgresql://postgres@/postgres?host={pg}"


def _stop_postgres(tmp: Path) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D",
                    str(tmp / "pg" / "data"), "-m", "immediate", "stop"], capture_output=True)


def _image(tmp: Path) -> None:
    tiny = tmp / "images" / "tiny"
    tiny.mkdir(parents=True)
    (tiny / "vmlinux").write_bytes(b"\x7fELF")
    (tiny / "image.json").write_text(json.dumps({"name": "tiny", "kernel": "vmlinux",
                                                 "cmdline": "console=ttyS0", "agent": True}))
    os.environ.update(CORRAL_IMAGE_PATH=str(tmp / "images"), CORRAL_HOST_CPUS="512",
                      CORRAL_HOST_MEMORY="1T", CORRAL_HEARTBEAT="0.5")


async def _open(home: Path, url: str | None, name: str) -> Any:
    from corral.config import Paths
    from corral.engine.fake import FakeDriver
    from corral.service.manager import Manager

    if url:
        os.environ.update(CORRAL_CLUSTER=url, CORRAL_HOST_NAME=name)
    else:
        os.environ.pop("CORRAL_CLUSTER", None)
    m = Manager(Paths(home), driver=FakeDriver())
    await m.open()
    return m


async def _time(op: Callable[[int], Awaitable[Any]], n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        await op(i)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _body(name: str) -> dict[str, Any]:
    return {"name": name, "image": "tiny", "memory": "64M"}


async def run(n: int, vms: int) -> dict[str, dict[str, list[float]]]:
    tmp = Path(tempfile.mkdtemp(prefix="crl-bench-"))
    _image(tmp)
    url = _postgres(tmp)
    single = cluster = other = None
    try:
        single = await _open(tmp / "single", None, "")
        cluster = await _open(tmp / "h1", url, "h1")
        token = (await cluster.cluster.new_token())["token"]
        os.environ["CORRAL_JOIN_TOKEN"] = token
        other = await _open(tmp / "h2", url, "h2")
        res: dict[str, dict[str, list[float]]] = {}

        async def both(op: str, f: Callable[[Any, str, int], Awaitable[Any]]) -> None:
            for side, m in (("sqlite", single), ("cluster", cluster)):
                res.setdefault(op, {})[side] = await _time(
                    lambda i, m=m, side=side: f(m, side, i), n)

        async def create(m: Any, side: str, i: int) -> Any:
            body = {**_body(f"d{i}"), "host": "h1"} if side == "cluster" else _body(f"d{i}")
            return await (m.cluster.create(body, start=False, wait=False, timeout=30,
                                           queue=True) if side == "cluster"
                          else m.vms.create(body))

        async def run_(m: Any, side: str, i: int) -> Any:
            body = {**_body(f"r{i}"), "host": "h1"} if side == "cluster" else _body(f"r{i}")
            return await (m.cluster.create(body, start=True, wait=False, timeout=30,
                                           queue=True) if side == "cluster"
                          else m.vms.create(body, start=True))

        await both("create (define)", create)
        await both("run (define + start)", run_)
        await both("pause", lambda m, _s, i: m.vms.pause(f"r{i}"))
        await both("resume", lambda m, _s, i: m.vms.resume(f"r{i}"))
        for m in (single, cluster):
            for i in range(vms - 2 * n):
                await m.vms.create(_body(f"x{i}"))
        await both(f"list ({vms} VMs)", lambda m, side, _i: m.cluster.list_vms()
                   if side == "cluster" else asyncio.sleep(0, m.vms.list()))
        res["run placed on another host"] = {"cluster": await _time(
            lambda i: cluster.cluster.create({**_body(f"o{i}"), "host": "h2"}, start=True,
                                             wait=False, timeout=30, queue=True), n)}
        res["show a VM of another host"] = {"cluster": await _time(
            lambda i: cluster.cluster.get(f"o{i}"), n)}
        return res
    finally:
        for m in (other, cluster, single):
            if m is not None:
                for rec in m.runtime.db.list_vms():
                    await m.vms.rm(rec.name)
                await m.close()
        _stop_postgres(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


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
    res = asyncio.run(run(args.n, args.vms))
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"Cluster store benchmark: fake engine, {os.cpu_count()} CPUs; median (min-max) "
          f"of n={args.n}, ms")
    print(f"{'operation':<30}  {'one host, SQLite':>22}  {'cluster, PostgreSQL':>22}  ratio")
    for op, sides in res.items():
        s, c = sides.get("sqlite"), sides.get("cluster")
        ratio = f"{statistics.median(c) / statistics.median(s):.2f}x" if s and c else "—"
        print(f"{op:<30}  {_fmt(s):>22}  {_fmt(c):>22}  {ratio:>5}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
