"""``corral migrate`` through the daemons vs the same QEMU migration driven by hand over QMP,
side by side in one run.

    CORRAL_IMAGE_PATH=build/images .venv/bin/python bench/migrate_corral.py [--reps 3]
        [--sizes 256,1024] [--json FILE]

Runs as root. The Corral side is a real cluster on this machine: PostgreSQL and three
``corral serve`` in network namespaces joined by a bridge (the integration tests' cluster,
:mod:`tests.integration.cluster_hosts`; names from ``CORRAL_TEST_UNDERLAY``, default
``crlb:253``). For each guest size (MiB) and workload (``idle``; ``dirty``: a loop in the
guest rewriting 48 MiB of its RAM) one tiny guest is booted on h1 and then moved back and
forth between h1 and h2 with ``Client.migrate`` (what ``corral migrate`` calls), once per
repetition: no new boot. Timed:

* **Corral end to end**: the client's call until the VM's answer from its new host: the
  checks, the target making the VM's place and starting its QEMU ``-incoming``, the stream,
  the switch of the cluster-wide name, the source letting go.
* **Corral stream**: of that, the migration itself as the source's QEMU reports it
  (``migration.total_time``), and QEMU's ``downtime``.
* **raw QMP**: the same migration by hand (:func:`migration.raw`: ``migrate-incoming``,
  ``migrate``, ``query-migrate`` every 10 ms, ``cont``) between a pair of QEMUs launched
  on this host over loopback; its target is launched beforehand, so its time compares with
  Corral's stream, and Corral's end-to-end time shows what the daemons add.

Repetitions alternate Corral and raw. Targets (issue 12): Corral within 1.1x of raw on the
migration's total time, downtime under 300 ms for the idle 256 MiB guest under TCG.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("CORRAL_TEST_UNDERLAY", "crlb:253")

import migration  # noqa: E402  (bench/migration.py: the raw QMP side)
from _common import Summary, fmt_summary, ratio, render_table, run_benchmark  # noqa: E402

from corral.engine import accel  # noqa: E402
from corral.engine.qemu.driver import QemuDriver  # noqa: E402

VM = "bm"


def corral_round(hosts: dict[str, Any], where: str, vm_name: str
                 ) -> tuple[str, float, float, float]:
    """One migration of the guest to the other host; (its new host, end-to-end ms, stream ms,
    downtime ms)."""
    to = "h2" if where == "h1" else "h1"
    c = hosts["h3"].client  # any daemon takes it: forwarded to the VM's host
    t0 = time.perf_counter()
    vm: Any = c.migrate(vm_name, to, timeout=300)
    wall = (time.perf_counter() - t0) * 1000
    m = vm["migration"]
    assert vm["host"] == to and vm["state"] == "running", vm
    return to, wall, m["total_time"] * 1000, m["downtime"] * 1000


def raw_round(driver: QemuDriver, mib: int, workload: str) -> tuple[float, float]:
    async def one() -> tuple[float, float]:
        with tempfile.TemporaryDirectory(prefix="corral-bench-mig-") as d:
            pair = migration.Pair(driver, Path(d))
            try:
                await pair.start(mib, workload)
                return await migration.raw(pair)
            finally:
                await pair.close()
    return asyncio.run(one())


def run(reps: int, sizes: list[int], image_path: str) -> dict[str, list[float]]:
    from tests.integration.cluster_fixture import three_hosts

    driver = QemuDriver(accel.detect().name, accel.tsc_khz())
    samples: dict[str, list[float]] = {}
    memory = f"{max(sizes) * 2 + 512}M"
    with three_hosts(image_path, CORRAL_HOST_MEMORY=memory) as hosts:
        c = hosts["h1"].client
        for mib in sizes:
            for workload in ("idle", "dirty"):
                name = f"{VM}{mib}{workload[0]}"  # a name of its own: nothing reused
                c.create(name, start=True, wait=True, host="h1", memory=f"{mib}M", timeout=300)
                where = "h1"
                if workload == "dirty":
                    c.exec(name, ["sh", "-c", migration.DIRTY])
                    time.sleep(1.0)
                for rep in range(reps):
                    for side in (("corral", "raw") if rep % 2 == 0 else ("raw", "corral")):
                        key = f"{mib}/{workload}"
                        if side == "corral":
                            where, wall, stream, down = corral_round(hosts, where, name)
                            samples.setdefault(f"{key}/corral/wall", []).append(wall)
                            samples.setdefault(f"{key}/corral/total", []).append(stream)
                        else:
                            stream, down = raw_round(driver, mib, workload)
                            samples.setdefault(f"{key}/raw/total", []).append(stream)
                        samples.setdefault(f"{key}/{side}/downtime", []).append(down)
                        print(f"  {mib} MiB {workload:5} {side:6} migration {stream:7.0f} ms"
                              f"  downtime {down:5.0f} ms", flush=True)
                hosts[where].client.destroy(name)
    return samples


def report(samples: dict[str, list[float]], sizes: list[int]) -> None:
    rows = []
    for mib in sizes:
        for workload in ("idle", "dirty"):
            k = f"{mib}/{workload}"
            wall = Summary.of(samples[f"{k}/corral/wall"])
            c_tot, r_tot = (Summary.of(samples[f"{k}/{s}/total"]) for s in ("corral", "raw"))
            c_down, r_down = (Summary.of(samples[f"{k}/{s}/downtime"])
                              for s in ("corral", "raw"))
            rows.append([f"{mib} MiB {workload}", fmt_summary(wall), fmt_summary(c_tot),
                         fmt_summary(r_tot), ratio(c_tot, r_tot), ratio(wall, r_tot),
                         fmt_summary(c_down), fmt_summary(r_down)])
    print()
    print(render_table(["guest", "corral migrate ms", "Corral stream ms", "raw QMP ms",
                        "stream ratio", "end-to-end ratio", "Corral downtime ms",
                        "raw downtime ms"], rows))
    first = f"{sizes[0]}/idle"
    c, r = Summary.of(samples[f"{first}/corral/total"]), Summary.of(samples[f"{first}/raw/total"])
    down = Summary.of(samples[f"{first}/corral/downtime"])
    if c and r and down:
        print(f"\ntarget: Corral within 1.1x of raw ({sizes[0]} MiB idle, the migration): "
              f"{c.median / r.median:.2f}x {'PASS' if c.median <= 1.1 * r.median else 'MISS'}")
        print(f"target: downtime under 300 ms ({sizes[0]} MiB idle): {down.median:.0f} ms "
              f"{'PASS' if down.median < 300 else 'MISS'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sizes", default="256,1024", help="guest sizes in MiB (default 256,1024)")
    ap.add_argument("--json", type=Path, help="also write the samples here")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    samples = run(args.reps, sizes, os.environ.get("CORRAL_IMAGE_PATH", "build/images"))
    report(samples, sizes)
    if args.json:
        args.json.write_text(json.dumps(samples, indent=1))
    return 0


if __name__ == "__main__":
    run_benchmark(main)
