"""Live-migration benchmark: Corral's engine vs the same QEMU migration driven by hand over
QMP, side by side in one run.

    CORRAL_IMAGE_PATH=build/images .venv/bin/python bench/migration.py [--reps 3]
        [--sizes 256,1024] [--json FILE]

For each guest size (MiB) and workload (``idle``, and ``dirty``: a loop in the guest that
rewrites 48 MiB of its RAM over and over), every repetition boots a fresh pair of the tiny
guest (q35, 1 vCPU, TCG) on this host: a source, and a target launched ``-incoming defer -S``
with the same argv. Both are launched by Corral's engine driver; what differs is who moves
the guest over loopback TCP:

* **Corral**: ``serve_incoming`` on the target, ``migrate_to`` on the source (auto-converge,
  300 ms downtime limit, no bandwidth cap), ``finish_incoming`` on the target.
* **raw QMP**: Corral's monitors are closed and a minimal QMP client (``_common.QMP``) does the
  same by hand: ``migrate-incoming``, capabilities and parameters, ``migrate``,
  ``query-migrate`` every 10 ms until ``completed``, ``query-status`` on the target until the
  guest is there, ``cont``.

Timed: from the ``migrate`` call to the guest running on the target (wall), and QEMU's own
``downtime``. The systems alternate within each repetition, the order rotating. This is the
engine path that ``corral migrate`` uses; the cluster adds the request's forwarding.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import QMP, Summary, fmt_summary, ratio, render_table, run_benchmark

from corral.domain.specs import NicSpec, VMSpec, new_mac
from corral.engine import accel
from corral.engine.driver import LaunchOptions, MigrationOptions
from corral.engine.qemu.driver import QemuDriver, QemuMachine

DIRTY = ("(while :; do dd if=/dev/zero of=/tmp/dirty bs=1M count=48 2>/dev/null; done) "
         ">/dev/null 2>&1 &")
CMDLINE = ("console=ttyS0 quiet panic=-1 cryptomgr.notests i8042.noaux i8042.nomux "
           "i8042.nopnp i8042.dumbkbd no_timer_check")
DOWNTIME_MS = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tiny_dir() -> Path:
    import os

    for p in os.environ.get("CORRAL_IMAGE_PATH", "build/images").split(":"):
        if (Path(p) / "tiny" / "initrd.lz4").is_file():
            return Path(p) / "tiny"
    raise SystemExit("no tiny image: run `make image` and set CORRAL_IMAGE_PATH")


def spec(mib: int) -> VMSpec:
    tiny = tiny_dir()
    return VMSpec(name="bench-mig", image="tiny", cpus=1, memory_bytes=mib << 20,
                  kernel=str(tiny / "vmlinux"), initrd=str(tiny / "initrd.lz4"),
                  cmdline=CMDLINE, machine="q35", cpu_model="max", disks=[],
                  nics=[NicSpec(mode="user", mac=new_mac())])


class Pair:
    def __init__(self, driver: QemuDriver, work: Path) -> None:
        self.driver, self.work = driver, work
        self.source: QemuMachine | None = None
        self.target: QemuMachine | None = None

    async def start(self, mib: int, workload: str) -> None:
        s = spec(mib)
        self.source = await self.driver.launch(s, self.work / "src", self.work / "src.log",
                                               lambda _e, _d: None)
        self.source.watch_exit(lambda _x: None)
        await self.source.guest_wait_ready(120)
        if workload == "dirty":
            await self.source.guest_exec(["sh", "-c", DIRTY], capture=False)
            await asyncio.sleep(1.0)  # let it run
        self.target = await self.driver.launch(
            s, self.work / "dst", self.work / "dst.log", lambda _e, _d: None,
            LaunchOptions(incoming=True, hold=True))
        self.target.watch_exit(lambda _x: None)

    async def close(self) -> None:
        for m, side in ((self.source, "src"), (self.target, "dst")):
            if m is None:
                continue
            if m.alive:
                m.kill()
                await m.wait_exit(10)
            await m.close()
            self.driver.cleanup(self.work / side)


async def corral(pair: Pair) -> tuple[float, float]:
    assert pair.source and pair.target
    uri = f"tcp:127.0.0.1:{free_port()}"
    await pair.target.serve_incoming(uri)
    t0 = time.perf_counter()
    result = await pair.source.migrate_to(uri, MigrationOptions(
        max_downtime=DOWNTIME_MS / 1000, timeout=300))
    await pair.target.finish_incoming(60)
    return (time.perf_counter() - t0) * 1000, result.downtime * 1000


async def raw(pair: Pair) -> tuple[float, float]:
    assert pair.source and pair.target
    await pair.source.close()   # QEMU serves one QMP client: hand the sockets over
    await pair.target.close()
    src = QMP(pair.work / "src" / "qmp.sock")
    dst = QMP(pair.work / "dst" / "qmp.sock")
    try:
        uri = f"tcp:127.0.0.1:{free_port()}"
        dst.execute("migrate-incoming", {"uri": uri})
        src.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": "auto-converge", "state": True}]})
        src.execute("migrate-set-parameters", {"downtime-limit": DOWNTIME_MS,
                                               "max-bandwidth": 1 << 40})
        t0 = time.perf_counter()
        src.execute("migrate", {"uri": uri})
        while True:
            info: dict[str, Any] = src.execute("query-migrate")
            if info["status"] == "completed":
                break
            if info["status"] in ("failed", "cancelled"):
                raise RuntimeError(f"raw migration {info['status']}: {info}")
            time.sleep(0.01)
        while dst.execute("query-status")["status"] in ("inmigrate", "postmigrate",
                                                         "prelaunch"):
            time.sleep(0.002)
        dst.execute("cont")
        return (time.perf_counter() - t0) * 1000, float(info.get("downtime", 0))
    finally:
        src.close()
        dst.close()


async def run(reps: int, sizes: list[int]) -> dict[str, Any]:
    driver = QemuDriver(accel.detect().name, accel.tsc_khz())
    samples: dict[str, list[float]] = {}
    systems = [("corral", corral), ("raw", raw)]
    for mib in sizes:
        for workload in ("idle", "dirty"):
            for rep in range(reps):
                order = systems if rep % 2 == 0 else systems[::-1]
                for key, fn in order:
                    with tempfile.TemporaryDirectory(prefix="corral-bench-mig-") as d:
                        pair = Pair(driver, Path(d))
                        try:
                            await pair.start(mib, workload)
                            total, down = await fn(pair)
                        finally:
                            await pair.close()
                    samples.setdefault(f"{mib}/{workload}/{key}/total", []).append(total)
                    samples.setdefault(f"{mib}/{workload}/{key}/downtime", []).append(down)
                    print(f"  {mib} MiB {workload:5} {key:6} total {total:7.0f} ms  "
                          f"downtime {down:5.0f} ms", flush=True)
    return samples


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sizes", default="256,1024", help="guest sizes in MiB (default 256,1024)")
    ap.add_argument("--json", type=Path, help="also write the samples here")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    samples = asyncio.run(run(args.reps, sizes))
    rows = []
    for mib in sizes:
        for workload in ("idle", "dirty"):
            k = f"{mib}/{workload}"
            c_tot, r_tot = (Summary.of(samples[f"{k}/{s}/total"]) for s in ("corral", "raw"))
            c_down, r_down = (Summary.of(samples[f"{k}/{s}/downtime"])
                              for s in ("corral", "raw"))
            rows.append([f"{mib} MiB {workload}", fmt_summary(c_tot), fmt_summary(r_tot),
                         ratio(c_tot, r_tot), fmt_summary(c_down), fmt_summary(r_down)])
    print()
    print(render_table(["guest", "Corral total ms", "raw total ms", "ratio",
                        "Corral downtime ms", "raw downtime ms"], rows))
    first = f"{sizes[0]}/idle"
    c, r = Summary.of(samples[f"{first}/corral/total"]), Summary.of(samples[f"{first}/raw/total"])
    down = Summary.of(samples[f"{first}/corral/downtime"])
    if c and r and down:
        print(f"\ntarget: Corral within 1.1x of raw on total time ({sizes[0]} MiB idle): "
              f"{c.median / r.median:.2f}x {'PASS' if c.median <= 1.1 * r.median else 'MISS'}")
        print(f"target: downtime under 300 ms ({sizes[0]} MiB idle): {down.median:.0f} ms "
              f"{'PASS' if down.median < 300 else 'MISS'}")
    if args.json:
        args.json.write_text(json.dumps(samples, indent=1))
    return 0


if __name__ == "__main__":
    run_benchmark(main)
