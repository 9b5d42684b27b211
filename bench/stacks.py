"""Stacks: one ``corral apply`` of N warm clones against the same N clones made one command
at a time (``corral run --from-snapshot``), and the cost of planning an unchanged stack
against listing the VMs it holds.

    python bench/stacks.py [--clones 4] [--reps 3]

A daemon with its own temporary home serves both sides; a template VM and its memory
snapshot are made once, untimed (the first warm start also makes the snapshot's template,
in a warm-up round). Every VM is removed after each round; the home is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import Summary, fmt_summary, ratio, render_table, run_benchmark

CORRAL = str(Path(sys.executable).parent / "corral")


class Daemon:
    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="crl-bench-", dir="/tmp"))
        self.env = {**os.environ, "CORRAL_HOME": str(self.home),
                    "CORRAL_SOCKET": str(self.home / "corral.sock"), "CORRAL_CPU_RATIO": "8"}
        self.log = (self.home / "daemon.log").open("wb")
        self.proc = subprocess.Popen([CORRAL, "serve"], env=self.env, stdout=self.log,
                                     stderr=self.log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while self.cli("list", check=False).returncode != 0:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the daemon did not start; see " + str(self.home))
            time.sleep(0.1)

    def cli(self, *args: str, check: bool = True, stdin: str | None = None
            ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([CORRAL, *args], env=self.env, capture_output=True, text=True,
                             input=stdin, timeout=600)
        if check and res.returncode != 0:
            raise RuntimeError(f"corral {' '.join(args)}: {res.stderr.strip()}")
        return res

    def timed(self, *args: str, stdin: str | None = None) -> float:
        t0 = time.perf_counter()
        self.cli(*args, stdin=stdin)
        return (time.perf_counter() - t0) * 1000

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.cli("stack", "rm", "farm", check=False)
            for name in _names(self):
                self.cli("rm", name, check=False)
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()
        shutil.rmtree(self.home, ignore_errors=True)


def _names(d: Daemon) -> list[str]:
    import json

    return [v["name"] for v in json.loads(d.cli("list", "--json").stdout)]


def farm(n: int) -> str:
    return f"name: farm\nvms:\n  w:\n    from_snapshot: tmpl:s1\n    count: {n}\n"


def one_round(d: Daemon, n: int) -> tuple[float, float, float, float]:
    """(apply ms, sequential CLI ms, plan ms of the unchanged stack, list ms)."""
    applied = d.timed("apply", "-f", "-", stdin=farm(n))
    planned = d.timed("plan", "-f", "-", "--name", "farm", stdin=farm(n))
    listed = d.timed("list")
    d.cli("stack", "rm", "farm")
    t0 = time.perf_counter()
    for i in range(n):
        d.cli("run", f"s{i}", "--from-snapshot", "tmpl:s1")
    one_by_one = (time.perf_counter() - t0) * 1000
    for i in range(n):
        d.cli("rm", f"s{i}")
    return applied, one_by_one, planned, listed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clones", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    d = Daemon()
    try:
        d.cli("run", "tmpl", "--memory", "192M")
        d.cli("snapshot", "create", "tmpl", "s1", "--memory")
        one_round(d, 1)  # warm-up: makes the snapshot's template
        rounds = [one_round(d, args.clones) for _ in range(args.reps)]
    finally:
        d.close()
    s = [Summary.of([r[i] for r in rounds]) for i in range(4)]
    print(f"Corral stacks benchmark: {os.cpu_count()} CPUs, {args.clones} warm clones of the "
          f"tiny image from one memory snapshot; median (min-max) of {args.reps} rounds\n")
    print(render_table(["operation (ms)", "corral apply", "one command each", "apply/each"],
                       [[f"{args.clones} warm clones, ready", fmt_summary(s[0]),
                         fmt_summary(s[1]), ratio(s[0], s[1])]]))
    print()
    print(render_table(["operation (ms)", "corral plan", "corral list", "plan/list"],
                       [[f"unchanged stack of {args.clones} VMs", fmt_summary(s[2]),
                         fmt_summary(s[3]), ratio(s[2], s[3])]]))
    return 0


if __name__ == "__main__":
    run_benchmark(main)
