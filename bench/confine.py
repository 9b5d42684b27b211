"""The cost of confining QEMU: start → QMP ready as root vs confined, side by side in one run.

    CORRAL_IMAGE_PATH=build/images .venv/bin/python bench/confine.py [--reps 15] [--json FILE]

Both go through Corral's own QEMU driver (``QemuDriver.launch``, which returns once the
monitor is connected and its capabilities negotiated) with the same VM: the tiny image's
kernel and initrd, a qcow2 root disk on the image's base (when it has one) and a vmstate
node, q35, 1 vCPU, 256 MiB, TCG, held before its first instruction (``-S``) so that no
booting guest competes for the CPU:

* **root**: QEMU runs as root, no seccomp filter, no private view, no cgroups (the
  spawner's double fork only);
* **confined**: what ``corral serve`` does as root: the files handed over to the
  ``corral-qemu`` user, memory and pids cgroups made, a mount namespace with the home's
  private view, QEMU started as that user with ``-sandbox on,obsolete=deny,
  elevateprivileges=deny,spawn=deny,resourcecontrol=deny``;
* **raw -daemonize** (reference): QEMU as Corral used to start it, as root, with
  ``-daemonize -pidfile`` and its own monitor socket, then a QMP client's handshake.

The systems alternate in every repetition (the order rotating), after one discarded warm-up
each. Numbers are medians (min-max) in milliseconds. Target: confined under 10 % slower
than root.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import QMP, Summary, fmt_summary, ratio, render_table, run_benchmark

from corral.config import Paths
from corral.domain.specs import DiskSpec, VMSpec
from corral.engine.qemu import argv as qargv
from corral.engine.qemu.driver import QemuDriver
from corral.engine.qemu.process import become_subreaper, reap
from corral.host import cgroups, qemu_img
from corral.host.runner import run
from corral.images import catalog
from corral.service import confinement

SYSTEMS = ("root", "confined", "raw")
TITLES = {"root": "root", "confined": "confined", "raw": "raw -daemonize"}


def make_spec(paths: Paths) -> VMSpec:
    image = catalog.resolve(paths, "tiny")
    vm_dir = paths.vm_dir("bench")
    vm_dir.mkdir(parents=True)
    disks = []
    if image.disk:
        root = vm_dir / "root.qcow2"
        info = json.loads(run([qemu_img.QEMU_IMG, "info", "--output=json",
                               str(image.disk)]).stdout)
        run(qemu_img.create_argv(root, "qcow2", backing=image.disk,
                                 backing_format=info["format"]))
        disks.append(DiskSpec(path=str(root), format="qcow2"))
    vmstate = vm_dir / "vmstate.qcow2"
    run(qemu_img.create_argv(vmstate, "qcow2", size=1 << 30))
    return VMSpec(name="bench", image="tiny", cpus=1, memory_bytes=256 << 20,
                  kernel=str(image.kernel), initrd=str(image.initrd), cmdline=image.cmdline,
                  machine="q35", cpu_model="max", disks=disks, nics=[], vmstate=str(vmstate))


def cpu_ms(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (clock ticks, in ms)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


Sample = tuple[float, float, float]  # wall ms, QEMU's CPU ms, the launcher's CPU ms


def own_cpu() -> float:
    """CPU time of this process and of its children it reaped (the spawner's intermediate),
    in ms."""
    t = os.times()
    return (t.user + t.system + t.children_user + t.children_system) * 1000


async def launch_once(driver: QemuDriver, spec: VMSpec, paths: Paths) -> Sample:
    from corral.engine.driver import LaunchOptions

    run_dir = paths.run_dir(spec.name)
    t0, c0 = time.perf_counter(), own_cpu()
    machine = await driver.launch(spec, run_dir, paths.vm_dir(spec.name) / "serial.log",
                                  lambda _e, _d: None, LaunchOptions(hold=True))
    ms, own = (time.perf_counter() - t0) * 1000, own_cpu() - c0
    qemu = cpu_ms(machine.pid)
    os.kill(machine.pid, 9)
    reap(machine.pid)
    await machine.close()
    driver.cleanup(run_dir, keep_dir=True)
    cgroups.remove_limits(paths.tag, spec.name)
    return ms, qemu, own


def raw_once(spec: VMSpec, paths: Paths) -> Sample:
    where = qargv.RunPaths(paths.run_dir("raw"))
    where.dir.mkdir(parents=True, exist_ok=True)
    argv = [*qargv.build(spec, where, paths.vm_dir(spec.name) / "serial-raw.log", "tcg"),
            "-S", "-daemonize", "-pidfile", str(where.pidfile)]
    t0, c0 = time.perf_counter(), own_cpu()
    subprocess.run(argv, check=True, capture_output=True)
    QMP(where.qmp).close()
    ms, own = (time.perf_counter() - t0) * 1000, own_cpu() - c0
    pid = int(where.pidfile.read_text())
    qemu = cpu_ms(pid)
    os.kill(pid, 9)
    reap(pid)
    where.remove()
    return ms, qemu, own


async def bench(reps: int, ws: Path) -> dict[str, list[Sample]]:
    paths = Paths(ws / "home")
    confinement.private_home(paths)
    spec = make_spec(paths)
    drivers = {"root": QemuDriver("tcg"),
               "confined": QemuDriver("tcg", confinement=confinement.decide(paths, "tcg"))}
    for part, why in drivers["confined"].confinement.off.items():
        print(f"note: no {part} here: {why}", file=sys.stderr)
    samples: dict[str, list[Sample]] = {k: [] for k in SYSTEMS}
    try:
        for rep in range(reps + 1):
            order = SYSTEMS[rep % 3:] + SYSTEMS[:rep % 3]
            for system in order:
                if system == "raw":
                    sample = raw_once(spec, paths)
                else:
                    sample = await launch_once(drivers[system], spec, paths)
                if rep:  # the first round warms caches up
                    samples[system].append(sample)
            print(f"round {rep}/{reps}", file=sys.stderr)
    finally:
        drivers["confined"].confinement.lower_guard()
    return samples


ROWS = [("start → QMP ready, wall (ms)", 0),
        ("QEMU's CPU time until then (ms)", 1),
        ("the launcher's CPU time, its forks included (ms)", 2)]


def report(samples: dict[str, list[Sample]]) -> tuple[str, bool]:
    header = ["QemuDriver.launch", *(TITLES[k] for k in SYSTEMS), "confined/root"]
    rows = []
    for label, i in ROWS:
        sums = {k: Summary.of([s[i] for s in v]) for k, v in samples.items()}
        rows.append([label, *(fmt_summary(sums[k]) for k in SYSTEMS),
                     ratio(sums["confined"], sums["root"])])
    wall = {k: Summary.of([s[0] for s in v]) for k, v in samples.items()}
    root, conf = wall["root"], wall["confined"]
    ok = root is not None and conf is not None and conf.median < root.median * 1.10
    verdict = (f"target: confined under 10% slower than root to QMP ready: "
               f"{'met' if ok else 'NOT met'} ({ratio(conf, root)} wall, medians; on a busy "
               "host the CPU rows are the steadier measure)")
    return render_table(header, rows) + "\n\n" + verdict, ok


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/confine.py runs as root (it compares root with the QEMU user)",
              file=sys.stderr)
        return 2
    become_subreaper()
    ws = Path(tempfile.mkdtemp(prefix="crl-bench-confine-"))
    ws.chmod(0o711)  # the home's parents must be searchable by QEMU's user
    try:
        samples = asyncio.run(bench(args.reps, ws))
    finally:
        shutil.rmtree(ws, ignore_errors=True)
    text, ok = report(samples)
    print(text)
    if args.json:
        out: dict[str, Any] = {
            label: {k: (s.as_dict() if (s := Summary.of([x[i] for x in v])) else None)
                    for k, v in samples.items()} for label, i in ROWS}
        args.json.write_text(json.dumps({**out, "target_met": ok}, indent=1))
    return 0


if __name__ == "__main__":
    run_benchmark(main)
