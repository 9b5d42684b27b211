"""One benchmark report: run the benchmarks, write ``docs/benchmarks.md`` with their tables
and plots (matplotlib, PNG under ``docs/benchmarks/``).

    CORRAL_IMAGE_PATH=build/images .venv/bin/python bench/report.py [--quick] [--only B,...]
        [--out docs]

It runs ``lifecycle.py``, ``state.py``, ``guest.py``, ``network.py``, ``overlay.py``,
``placement.py``, ``policies.py``, ``pool.py`` and ``serve.py`` one after another (each with its own
side-by-side table, printed into the report as it printed it), keeps their raw numbers
(``--json``), and plots: boot and warm-start distributions (cold vs warm vs pool vs raw
QEMU vs libvirt), pause and resume latency histograms (Corral vs raw QMP vs libvirt-python
vs virsh, where measured), daemon memory against the number of VMs, placement time against
hosts (log-log), queue policies simulated vs real, and pool hand-out latency with the queue
wait against the pool size beside the Erlang C curve. Every plot names the machine, the
date and the commit. A benchmark that fails is reported with the end of its output; the
others still run.

Each benchmark runs under ``_subreaper.py``; the report keeps its wall time, its CPU time
(user + system of it and every process it started, QEMU and the daemons included: what
other work on the host does not stretch), the run-queue delay of its processes (sampled
from ``/proc``) and from it an estimate of its wall time on a quiet host. The placer's
runs (CPU only, no VM) go in a thread beside the queue-policy benchmark, whose guests
mostly sleep.

``--quick`` runs each with fewer repetitions (about 5 minutes on a quiet 2-core host); the
full report takes about 20.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _plots import plot_all

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable

# name → (arguments, quick arguments, where its raw numbers go: "file" (--json FILE),
# "stdout" (--json prints them) or None)
BENCHES: dict[str, tuple[list[str], list[str], str | None]] = {
    "lifecycle": (["--with-libvirt"], ["--with-libvirt", "--reps", "1", "--no-warmup",
                                       "--pause-reps", "15", "--cli-reps", "4", "--vms", "1,3"],
                  "file"),
    "state": (["--with-libvirt"], ["--reps", "1", "--quick"], "file"),
    "guest": ([], ["--reps", "1", "--exec-reps", "10", "--mib", "2"], "file"),
    # 16 MB a transfer, not the scripts' 32: under TCG a guest moves 1-2 MB/s on a slow host,
    # so 32 MB took 16-27 s a transfer (18 transfers: a third of the report); 16 MB is still
    # seconds of steady flow, past the connection's start
    "network": (["--mb", "16"], ["--mb", "8", "--reps", "1"], None),
    "overlay": (["--mb", "16"], ["--mb", "4", "--reps", "1"], None),
    "placement": ([], ["--hosts", "300", "--requests", "3000", "--reps", "1"], "stdout"),
    "policies": ([], ["--policies", "fcfs,sjf"], "file"),
    "pool": ([], ["--quick"], "file"),
    "serve": ([], ["--vms", "6", "--restarts", "2"], "file"),
}
CPU_ONLY = {"placement"}  # no VMs: run in a thread beside a benchmark whose guests mostly sleep
BESIDE = ("policies", "serve", "pool")  # the first of these present
PLACEMENT_HOSTS = {False: (10, 100, 1000, 10000), True: (10, 100, 1000)}


def machine() -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip() or "unknown"
    return {"host": platform.node(), "cpu": cpu, "cpus": str(os.cpu_count()),
            "kernel": platform.release(),
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": commit}


class RunQueueDelay(threading.Thread):
    """Samples, twice a second, the run time and the run-queue delay (time runnable but
    waiting for a CPU; ``/proc/PID/task/TID/schedstat``) of a process and all its
    descendants, and from them what each half second would have taken on a quiet 2-core
    host: the interval less its delay divided by how many of the tree's threads wanted a CPU
    at once (two threads waiting the same second lose one second of wall time), never less
    than the CPU time they used spread over both cores."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root, self.stop = root, threading.Event()
        self.seen: dict[tuple[str, str], tuple[int, int]] = {}
        self.delay = self.quiet = 0.0

    def tree(self) -> list[str]:
        parent: dict[str, str] = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                with contextlib.suppress(OSError, IndexError):
                    parent[d] = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1]
        ours, grew = {str(self.root)}, True
        while grew:
            more = {p for p, pp in parent.items() if pp in ours} - ours
            ours |= more
            grew = bool(more)
        return list(ours)

    def sample(self) -> tuple[float, float]:
        for pid in self.tree():
            with contextlib.suppress(OSError):
                for tid in os.listdir(f"/proc/{pid}/task"):
                    with contextlib.suppress(OSError, IndexError, ValueError):
                        stat = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text()
                        run, wait = stat.split()[:2]
                        self.seen[(pid, tid)] = (int(run), int(wait))
        return (sum(r for r, _ in self.seen.values()) / 1e9,
                sum(w for _, w in self.seen.values()) / 1e9)

    def run(self) -> None:
        t, (r, d) = time.monotonic(), self.sample()
        while not self.stop.wait(0.5):
            now, (r2, d2) = time.monotonic(), self.sample()
            dt, ran, waited = now - t, max(0.0, r2 - r), max(0.0, d2 - d)
            wanted = ran + waited
            self.quiet += max(dt - waited / max(1.0, wanted / dt), ran / 2)
            self.delay += waited
            t, r, d = now, r2, d2
        self.quiet += time.monotonic() - t

    def seconds(self) -> tuple[float, float]:
        """(run-queue delay, quiet-host estimate) in seconds."""
        self.stop.set()
        self.join()
        return round(self.delay, 1), round(self.quiet, 1)


def run_timed(argv: list[str], work: Path, tag: str) -> dict[str, Any]:
    """Run ``argv`` under ``_subreaper.py`` (so every process it leaves behind, the daemonized
    QEMUs included, is reaped inside it): exit code, output, error output, wall seconds, CPU
    seconds (user + system) of it and all its descendants (what load does not inflate) and
    their run-queue delay."""
    t0 = time.monotonic()
    with (work / f"{tag}.out").open("w+") as so, (work / f"{tag}.err").open("w+") as se:
        proc = subprocess.Popen([PY, str(HERE / "_subreaper.py"), *argv], stdout=so,
                                stderr=se, text=True, cwd=ROOT)
        sampler = RunQueueDelay(proc.pid)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = rc = os.waitstatus_to_exitcode(status)
        delay, quiet = sampler.seconds()
        so.seek(0)
        se.seek(0)
        stdout, stderr = so.read(), se.read()
    return {"rc": rc, "stdout": stdout, "stderr": stderr,
            "seconds": round(time.monotonic() - t0, 1),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
            "delay_seconds": delay, "quiet_seconds": quiet}


def run_bench(name: str, quick: bool, work: Path) -> dict[str, Any]:
    full, short, raw = BENCHES[name]
    argv = [PY, str(HERE / f"{name}.py"), *(short if quick else full)]
    data_file = work / f"{name}.json"
    argv += ["--json", str(data_file)] if raw == "file" else ["--json"] if raw else []
    log(f"{name}: {' '.join(argv[1:])}")
    run = run_timed(argv, work, name)
    stdout, rc = run.pop("stdout"), run["rc"]
    log(f"{name}: exit {rc}, {run['seconds']} s wall, {run['cpu_seconds']} s CPU, "
        f"{run['delay_seconds']} s waiting for a CPU: about {run['quiet_seconds']} s on a "
        "quiet host")
    out: dict[str, Any] = {"name": name, "argv": argv[1:], **run, "text": stdout,
                           "stderr": run["stderr"][-3000:], "data": None}
    if raw == "stdout" and rc == 0:
        out["data"] = json.loads(stdout)
        out["text"] = json.dumps(out["data"], indent=2)
    elif raw == "file" and data_file.is_file():
        out["data"] = json.loads(data_file.read_text())
    return out


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def placement_series(quick: bool, work: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The placer at growing host counts (no VMs: CPU only), and its times."""
    series = []
    times = {"seconds": 0.0, "cpu_seconds": 0.0, "delay_seconds": 0.0, "quiet_seconds": 0.0}
    for hosts in PLACEMENT_HOSTS[quick]:
        run = run_timed([PY, str(HERE / "placement.py"), "--hosts", str(hosts), "--requests",
                         str(hosts * 10), "--reps", "1", "--naive-requests",
                         str(min(hosts * 10, 2000)), "--json"], work, f"placement-{hosts}")
        for k in times:
            times[k] = round(times[k] + run[k], 1)
        if run["rc"] == 0:
            series.append({"hosts": hosts, **json.loads(run["stdout"])["placement"]})
    log(f"placement series: {times}")
    return series, times


# ----- the document ---------------------------------------------------------------------------

def write_markdown(results: dict[str, dict[str, Any]], plots: list[tuple[str, str]],
                   m: dict[str, str], quick: bool, seconds: float, out: Path) -> Path:
    load = m.get("load") or "{:.1f} / {:.1f} / {:.1f}".format(*os.getloadavg())
    lines = ["# Corral benchmarks", "",
             f"Made by `make bench-report{' QUICK=1' if quick else ''}` "
             f"({'quick: fewer repetitions' if quick else 'full'}) in {seconds / 60:.1f} min.",
             "", f"- machine: {m['host']}, {m['cpus']}× {m['cpu']}, Linux {m['kernel']}",
             f"- date: {m['date']}; commit {m['commit']}",
             f"- load average at the end: {load} (other work on the host stretches every "
             "timing)", "", "## Plots", ""]
    for name, title in plots:
        lines += [f"### {title}", "", f"![{title}](benchmarks/{name})", ""]
    if m.get("times"):
        lines += ["## Time taken", "", "CPU: user + system time of the benchmark and all its "
                  "processes (QEMU included), what other work on the host does not stretch; "
                  "waiting: their run-queue delay; quiet: the wall time less that delay.", "",
                  "```", m["times"], "```", ""]
    lines += ["## Tables", ""]
    for name, r in results.items():
        status = "ok" if r["rc"] == 0 else f"FAILED (exit {r['rc']})"
        shown = " ".join(a for a in r["argv"][1:] if not a.startswith("/"))
        took = f"{r['seconds']} s wall, {r.get('cpu_seconds', '?')} s CPU"
        lines += [f"### {name}", "", f"`bench/{name}.py {shown}` — {status}, {took}",
                  "", "```", (r["text"] or "").rstrip() or "(no output)", "```", ""]
        if r["rc"] != 0:
            lines += ["End of its error output:", "", "```", r["stderr"].rstrip(), "```", ""]
    path = out / "benchmarks.md"
    text = "\n".join(lines)
    path.write_text(text.replace(str(ROOT) + "/", "").replace(str(ROOT), "."))
    return path


def run_all(names: list[str], quick: bool, work: Path
            ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], dict[str, Any] | None]:
    """The benchmarks one after another, but the CPU-only ones (the placer) in a thread
    beside the first of ``BESIDE``, whose VMs mostly sleep: one core is idle then."""
    results: dict[str, dict[str, Any]] = {}
    side: dict[str, Any] = {}

    def cheap() -> None:
        for name in names:
            if name in CPU_ONLY:
                results[name] = run_bench(name, quick, work)
        if "placement" in names:
            side["placement"], side["times"] = placement_series(quick, work)

    thread = threading.Thread(target=cheap)
    serial = [n for n in names if n not in CPU_ONLY]
    first = next((n for n in serial if n in BESIDE), None)
    for name in serial:
        if name == first:
            thread.start()
        results[name] = run_bench(name, quick, work)
    if first is None:
        thread.start()
    thread.join()
    ordered = {n: results[n] for n in names if n in results}
    return ordered, side.get("placement", []), side.get("times")


def times_table(results: dict[str, dict[str, Any]], series: dict[str, Any] | None,
                seconds: float) -> str:
    """Wall time, CPU time (user + system, the bench and all its descendants), run-queue
    delay and the quiet-host estimate, per benchmark."""
    rows = [(n, r) for n, r in results.items()]
    if series:
        rows.append(("placement series", series))
    lines = [f"{'benchmark':<26}{'wall s':>8}{'CPU s':>8}{'waiting s':>11}{'quiet s':>9}"]
    for name, r in rows:
        tag = " (beside)" if name in CPU_ONLY or name == "placement series" else ""
        lines.append(f"{name + tag:<26}{r['seconds']:>8.1f}{r['cpu_seconds']:>8.1f}"
                     f"{r['delay_seconds']:>11.1f}{r['quiet_seconds']:>9.1f}")
    cpu = sum(r["cpu_seconds"] for _, r in rows)
    quiet = sum(r["quiet_seconds"] for n, r in rows
                if n not in CPU_ONLY and n != "placement series")
    lines.append(f"{'total':<26}{seconds:>8.1f}{cpu:>8.1f}{'':>11}{quiet:>9.1f}")
    lines.append(f"CPU time {cpu:.0f} s = {cpu / 2 / 60:.1f} min of both cores; estimated "
                 f"quiet-host wall time {quiet / 60:.1f} min (the benchmarks beside another "
                 "not counted)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repetitions (about 5 min)")
    p.add_argument("--only", help="run only these benchmarks (comma-separated)")
    p.add_argument("--out", type=Path, default=ROOT / "docs", help="where benchmarks.md goes")
    p.add_argument("--replot", action="store_true",
                   help="redraw the plots and the page from the last run's results.json")
    args = p.parse_args(argv)
    saved = args.out / "benchmarks" / "results.json"
    if args.replot:
        last = json.loads(saved.read_text())
        plots = plot_all(last["results"], last["placement"], last["machine"],
                         args.out / "benchmarks")
        write_markdown(last["results"], plots, last["machine"], last["quick"],
                       last["seconds"], args.out)
        return 0
    names = args.only.split(",") if args.only else list(BENCHES)
    unknown = set(names) - set(BENCHES)
    if unknown:
        p.error(f"unknown benchmarks: {', '.join(sorted(unknown))}")
    m = machine()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="crl-report-") as tmp:
        results, placement, series_times = run_all(names, args.quick, Path(tmp))
    m["load"] = "{:.1f} / {:.1f} / {:.1f}".format(*os.getloadavg())
    plots = plot_all(results, placement, m, args.out / "benchmarks")
    seconds = time.monotonic() - t0
    own = resource.getrusage(resource.RUSAGE_SELF)
    m["times"] = (times_table(results, series_times, seconds) + f"\nthis report's own process: "
                  f"{own.ru_utime + own.ru_stime:.1f} s CPU (the /proc sampling, the plots)")
    saved.write_text(json.dumps({"results": results, "placement": placement, "machine": m,
                                 "quick": args.quick, "seconds": seconds})
                     .replace(str(ROOT) + "/", "").replace(str(ROOT), "."))  # no local paths
    path = write_markdown(results, plots, m, args.quick, seconds, args.out)
    print(m["times"])
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} with "
          f"{len(plots)} plots in {(time.monotonic() - t0) / 60:.1f} min")
    return 0 if all(r["rc"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
