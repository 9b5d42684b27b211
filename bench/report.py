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

``--quick`` runs each with fewer repetitions (about 5 minutes on a quiet 2-core host); the
full report takes about 20.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable

# name → (arguments, quick arguments, where its raw numbers go: "file" (--json FILE),
# "stdout" (--json prints them) or None)
BENCHES: dict[str, tuple[list[str], list[str], str | None]] = {
    "lifecycle": (["--with-libvirt"], ["--with-libvirt", "--reps", "1", "--no-warmup",
                                       "--pause-reps", "15", "--cli-reps", "4", "--vms", "1"],
                  "file"),
    "state": (["--with-libvirt"], ["--reps", "1", "--quick"], "file"),
    "guest": ([], ["--reps", "1", "--exec-reps", "10", "--mib", "2"], "file"),
    "network": ([], ["--mb", "8", "--reps", "1"], None),
    "overlay": ([], ["--mb", "4", "--reps", "1"], None),
    "placement": ([], ["--hosts", "300", "--requests", "3000", "--reps", "1"], "stdout"),
    "policies": ([], ["--policies", "fcfs,sjf"], "file"),
    "pool": ([], ["--quick"], "file"),
    "serve": ([], ["--vms", "6", "--restarts", "2"], "file"),
}
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


def stamp(m: dict[str, str]) -> str:
    return f"{m['host']} · {m['cpus']}× {m['cpu']} · {m['date']} · commit {m['commit']}"


def run_bench(name: str, quick: bool, work: Path) -> dict[str, Any]:
    full, short, raw = BENCHES[name]
    argv = [PY, str(HERE / f"{name}.py"), *(short if quick else full)]
    data_file = work / f"{name}.json"
    argv += ["--json", str(data_file)] if raw == "file" else ["--json"] if raw else []
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(argv[1:])}", file=sys.stderr,
          flush=True)
    t0 = time.monotonic()
    res = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    out: dict[str, Any] = {"name": name, "argv": argv[1:], "rc": res.returncode,
                           "seconds": round(time.monotonic() - t0, 1), "text": res.stdout,
                           "stderr": res.stderr[-3000:], "data": None}
    if raw == "stdout" and res.returncode == 0:
        out["data"] = json.loads(res.stdout)
        out["text"] = json.dumps(out["data"], indent=2)
    elif raw == "file" and data_file.is_file():
        out["data"] = json.loads(data_file.read_text())
    return out


def placement_series(quick: bool) -> list[dict[str, Any]]:
    series = []
    for hosts in PLACEMENT_HOSTS[quick]:
        res = subprocess.run([PY, str(HERE / "placement.py"), "--hosts", str(hosts),
                              "--requests", str(hosts * 10), "--reps", "1",
                              "--naive-requests", str(min(hosts * 10, 2000)), "--json"],
                             capture_output=True, text=True, cwd=ROOT)
        if res.returncode == 0:
            series.append({"hosts": hosts, **json.loads(res.stdout)["placement"]})
    return series


# ----- plots ----------------------------------------------------------------------------------

def _samples(data: dict[str, Any] | None, key: str, op: str) -> dict[str, list[float]]:
    if not data:
        return {}
    by = data.get(key, {}).get(op, {})
    return {k: v for k, v in by.items() if v}


def plot_all(results: dict[str, dict[str, Any]], placement: list[dict[str, Any]],
             m: dict[str, str], out: Path) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    made: list[tuple[str, str]] = []
    data = {k: r["data"] for k, r in results.items()}

    def save(fig: Any, name: str, title: str) -> None:
        fig.text(0.5, 0.005, stamp(m), ha="center", va="bottom", fontsize=7, color="0.35")
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        made.append((name, title))

    plots: list[Callable[[], None]] = []

    def boots() -> None:
        series: dict[str, list[float]] = {}
        for system, xs in _samples(data.get("lifecycle"), "samples_ms", "boot").items():
            series[f"cold boot: {system}"] = xs
        for system, xs in _samples(data.get("state"), "samples", "warm_ready").items():
            series[f"warm start: {system}"] = xs
        pool = (data.get("pool") or {}).get("samples", {})
        for key, label in (("cold_ready", "cold boot (pool bench)"),
                           ("warm_agent", "warm start (pool bench)"),
                           ("pool_agent", "pool hand-out")):
            if pool.get(key):
                series[label] = pool[key]
        if not series:
            return
        fig, ax = plt.subplots(figsize=(9, 0.45 * len(series) + 1.6))
        ax.boxplot(list(series.values()), vert=False)
        ax.set_yticks(range(1, len(series) + 1), list(series))
        ax.set_xscale("log")
        ax.set_xlabel("request → guest agent answers (ms, log)")
        ax.set_title("Boot and warm-start times")
        save(fig, "boot.png", "Boot, warm start and pool hand-out to an answering guest")

    def pauses() -> None:
        lc = data.get("lifecycle")
        ops = [(op, _samples(lc, "samples_ms", op)) for op in ("pause", "resume")]
        if not any(s for _, s in ops):
            return
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, (op, by) in zip(axes, ops, strict=True):
            for system, xs in by.items():
                ax.hist(xs, bins=20, alpha=0.55, label=system)
            ax.set_xscale("log")
            ax.set_xlabel(f"{op} (ms, log)")
            ax.legend(fontsize=8)
        fig.suptitle("Pause and resume latency (API; virsh: CLI)")
        save(fig, "pause.png", "Pause and resume latency")

    def memory() -> None:
        mem = (data.get("lifecycle") or {}).get("memory_kib") or {}
        if not mem:
            return
        fig, ax = plt.subplots(figsize=(7, 4))
        for system, by in mem.items():
            counts = sorted(by, key=int)
            ax.plot([int(n) for n in counts], [by[n]["rss_kib"] / 1024 for n in counts],
                    marker="o", label=f"{system} RSS")
            ax.plot([int(n) for n in counts], [by[n]["pss_kib"] / 1024 for n in counts],
                    marker="x", linestyle="--", label=f"{system} PSS")
        ax.set_xlabel("idle VMs")
        ax.set_ylabel("daemon memory (MiB)")
        ax.set_title("Daemon memory against the number of VMs")
        ax.legend(fontsize=8)
        save(fig, "memory.png", "Daemon memory against the number of VMs")

    def placements() -> None:
        if not placement:
            return
        fig, ax = plt.subplots(figsize=(7, 4))
        hosts = [p["hosts"] for p in placement]
        for weigher in [k for k in placement[0] if k != "hosts"]:
            ax.plot(hosts, [p[weigher]["seconds"] for p in placement], marker="o",
                    label=f"Corral ({weigher})")
        first = next(k for k in placement[0] if k != "hosts")
        ax.plot(hosts, [p[first]["naive_seconds"] for p in placement], marker="x",
                linestyle="--", label="naive scan")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("hosts (10 requests per host)")
        ax.set_ylabel("seconds to place every request")
        ax.set_title("Placement time against hosts")
        ax.legend(fontsize=8)
        save(fig, "placement.png", "Placement time against hosts (log-log)")

    def policies() -> None:
        rows = data.get("policies") or []
        if not rows:
            return
        fig, ax = plt.subplots(figsize=(7, 4))
        x = range(len(rows))
        ax.bar([i - 0.2 for i in x], [r["real_mean"] for r in rows], 0.4, label="real VMs")
        ax.bar([i + 0.2 for i in x], [r["sim_mean"] for r in rows], 0.4,
               label="simulated (same trace)")
        ax.set_xticks(list(x), [r["policy"] for r in rows])
        ax.set_ylabel("mean response (s)")
        ax.set_title("Queue policies: real against simulated")
        ax.legend(fontsize=8)
        save(fig, "policies.png", "Queue policies, simulated vs real")

    def pools() -> None:
        pool = data.get("pool")
        if not pool:
            return
        sys.path.insert(0, str(ROOT / "src"))
        from corral.perf import pools as model

        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        s = pool["samples"]
        for key, label in (("pool_running", "hand-out → running"),
                           ("pool_agent", "hand-out → agent answers")):
            if s.get(key):
                a1.hist(s[key], bins=12, alpha=0.6, label=label)
        a1.set_xlabel("ms")
        a1.set_title("Pool hand-out latency")
        a1.legend(fontsize=8)
        refill = pool.get("refill_seconds") or 1.0
        rate = 0.8 / refill * 2  # a load of 1.6 Erlang: pools of 2-8 are interesting
        sizes = list(range(2, 9))
        theory = [model.mean_wait(rate, refill, c)[0] * 1000 for c in sizes]
        sim = [model.simulate(rate, refill, c, requests=20000).mean_wait * 1000 for c in sizes]
        a2.plot(sizes, theory, label="Erlang C (M/M/c)")
        a2.plot(sizes, sim, "o", label="simulated pool")
        a2.set_yscale("log")
        a2.set_xlabel("pool size")
        a2.set_ylabel("mean wait for a VM (ms, log)")
        a2.set_title(f"Queue wait: λ = {rate:.2g}/s, measured refill {refill:.2g} s")
        a2.legend(fontsize=8)
        save(fig, "pool.png", "Pool hand-out latency; queue wait against pool size")

    plots += [boots, pauses, memory, placements, policies, pools]
    for plot in plots:
        try:
            plot()
        except Exception as err:  # one plot's bad data must not lose the others
            print(f"plot {plot.__name__} failed: {err}", file=sys.stderr)
    return made


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
    lines += ["## Tables", ""]
    for name, r in results.items():
        status = "ok" if r["rc"] == 0 else f"FAILED (exit {r['rc']})"
        shown = " ".join(a for a in r["argv"][1:] if not a.startswith("/"))
        lines += [f"### {name}", "", f"`bench/{name}.py {shown}` — {status}, {r['seconds']} s",
                  "", "```", (r["text"] or "").rstrip() or "(no output)", "```", ""]
        if r["rc"] != 0:
            lines += ["End of its error output:", "", "```", r["stderr"].rstrip(), "```", ""]
    path = out / "benchmarks.md"
    text = "\n".join(lines)
    path.write_text(text.replace(str(ROOT) + "/", "").replace(str(ROOT), "."))
    return path


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
        results = {name: run_bench(name, args.quick, Path(tmp)) for name in names}
    placement = placement_series(args.quick) if "placement" in names else []
    m["load"] = "{:.1f} / {:.1f} / {:.1f}".format(*os.getloadavg())
    plots = plot_all(results, placement, m, args.out / "benchmarks")
    seconds = time.monotonic() - t0
    saved.write_text(json.dumps({"results": results, "placement": placement, "machine": m,
                                 "quick": args.quick, "seconds": seconds}))
    path = write_markdown(results, plots, m, args.quick, seconds, args.out)
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} with "
          f"{len(plots)} plots in {(time.monotonic() - t0) / 60:.1f} min")
    return 0 if all(r["rc"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
