"""The report's plots (matplotlib, PNG): each names the machine, the date and the commit."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


BOOT_NAMES = {"corral": "Corral", "raw": "raw QEMU", "libvirt": "libvirt", "virsh": "virsh"}
WARM_NAMES = {"corral": "Corral", "tmpl": "Corral's template by hand (raw QEMU)",
              "raw": "raw QEMU streamed restore", "virsh": "virsh restore"}
PAUSE_NAMES = {"corral": "Corral (corral.Client)", "raw": "raw QMP",
               "libvirt": "libvirt-python", "virsh": "virsh (CLI)"}


def stamp(m: dict[str, str]) -> str:
    return f"{m['host']} · {m['cpus']}× {m['cpu']} · {m['date']} · commit {m['commit']}"


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
        # cold boots to an answering agent, from lifecycle.py and state.py alike
        for bench, key, op in (("lifecycle", "samples_ms", "boot"), ("state", "samples", "cold")):
            for system, xs in _samples(data.get(bench), key, op).items():
                series.setdefault(f"cold boot: {BOOT_NAMES.get(system, system)}", []).extend(xs)
        for system, xs in _samples(data.get("state"), "samples", "warm_ready").items():
            series[f"warm start: {WARM_NAMES.get(system, system)}"] = xs
        for system, xs in _samples(data.get("state"), "samples", "restore_ready").items():
            series[f"restore: {BOOT_NAMES.get(system, system)}"] = xs
        pool = (data.get("pool") or {}).get("samples", {})
        for key, label in (("cold_ready", "cold boot: Corral (pool bench)"),
                           ("warm_agent", "warm start: Corral (pool bench)"),
                           ("pool_agent", "pool hand-out: Corral")):
            if pool.get(key):
                series[label] = pool[key]
        if not series:
            return
        labels = [f"{k} (n={len(v)})" for k, v in series.items()]
        fig, ax = plt.subplots(figsize=(9, 0.45 * len(series) + 1.8))
        ax.boxplot(list(series.values()), vert=False)
        for i, xs in enumerate(series.values(), start=1):
            ax.plot(xs, [i] * len(xs), "o", color="C0", alpha=0.5, markersize=4)
        ax.set_yticks(range(1, len(series) + 1), labels)
        ax.set_xscale("log")
        ax.set_xlabel("request → guest agent answers (ms, log)")
        missing = "" if any("libvirt" in k for k in series) else \
            " (libvirt not measured in this run)"
        ax.set_title(f"Boot and warm-start times{missing}")
        save(fig, "boot.png", "Boot, warm start and pool hand-out to an answering guest")

    def pauses() -> None:
        import numpy as np

        lc = data.get("lifecycle")
        ops = [(op, _samples(lc, "samples_ms", op)) for op in ("pause", "resume")]
        if not any(s for _, s in ops):
            return
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, (op, by) in zip(axes, ops, strict=True):
            every = [x for xs in by.values() for x in xs if x > 0]
            bins = np.geomspace(min(every), max(every), 30) if every else 20
            for system, xs in by.items():
                ax.hist(xs, bins=bins, alpha=0.55,
                        label=f"{PAUSE_NAMES.get(system, system)} (n={len(xs)})")
            ax.set_xscale("log")
            ax.set_xlabel(f"{op} (ms, log)")
            ax.set_ylabel("count")
            ax.legend(fontsize=8)
        missing = "" if any("libvirt" in by for _, by in ops) else \
            "; libvirt not measured in this run"
        fig.suptitle(f"Pause and resume latency (API; virsh: CLI{missing})")
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
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("idle VMs")
        ax.set_ylim(bottom=0)
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
        rows = [(label, s[key]) for key, label in (
            ("pool_running", "hand-out → running"), ("pool_agent", "hand-out → agent answers"),
            ("warm_running", "warm start → running"), ("warm_agent", "warm start → agent"))
            if s.get(key)]
        for i, (_, xs) in enumerate(rows):
            a1.plot(xs, [i] * len(xs), "o", alpha=0.6)
            a1.plot([sorted(xs)[len(xs) // 2]] * 2, [i - 0.3, i + 0.3], color="k")
        a1.set_yticks(range(len(rows)), [f"{lab} (n={len(xs)})" for lab, xs in rows])
        for limit, what, style in ((20, "target: running", ":"), (50, "target: agent", "--")):
            a1.axvline(limit, color="0.5", linestyle=style, label=f"{what} {limit} ms")
        a1.legend(fontsize=7, loc="lower right")
        a1.set_xscale("log")
        a1.set_xlabel("ms, log (bar: median)")
        a1.set_title("Pool hand-out latency")
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


