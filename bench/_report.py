"""Results of the lifecycle benchmark: samples, the printed tables, the targets and JSON."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import Summary, fmt_num, fmt_summary, ratio, render_table

TITLES = {"corral": "Corral", "raw": "raw QEMU", "libvirt": "libvirt-python", "virsh": "virsh"}
ROWS = [  # (op, label, compared with raw)
    ("boot", "boot → guest agent ready", True),
    ("spawn", "spawn → QMP ready (start returns)", True),
    ("destroy", "destroy → QEMU pid gone", True),
    ("pause", "pause (API; virsh: CLI)", True),
    ("resume", "resume (API; virsh: CLI)", True),
    ("list", "list VMs + states (API; virsh: CLI)", False),
    ("list_bare", "libvirt: listAllDomains() alone", False),
    ("cli_pause", "CLI: corral pause / virsh suspend", False),
    ("cli_resume", "CLI: corral resume / virsh resume", False),
    ("cli_list", "CLI: corral list / virsh list --all", False),
    # the CLI process's own CPU time (user + system): what load does not inflate
    ("cli_pause_cpu", "CLI process CPU: pause / suspend", False),
    ("cli_resume_cpu", "CLI process CPU: resume", False),
    ("cli_list_cpu", "CLI process CPU: list", False),
]
API_ROWS = ("pause", "resume", "list", "list_bare")  # virsh there is a CLI: no virsh/Corral ratio


@dataclass
class Results:
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    # system -> idle VM count -> {"rss_kib", "pss_kib", "qemu_rss_kib_median"}
    memory: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def add(self, op: str, system: str, ms: float) -> None:
        self.samples.setdefault(op, {}).setdefault(system, []).append(ms)

    def get(self, op: str, system: str) -> Summary | None:
        return Summary.of(self.samples.get(op, {}).get(system, []))

    def median(self, op: str, system: str = "corral") -> float | None:
        s = self.get(op, system)
        return s.median if s else None


def timing_table(res: Results, keys: Sequence[str]) -> str:
    lv = "libvirt" in keys
    header = ["operation (ms)", *(TITLES[k] for k in keys), "Corral/raw"]
    if lv:
        header += ["lv-py/Corral", "virsh/Corral"]
    rows = []
    for op, label, vs_raw in ROWS:
        cells = {k: res.get(op, k) for k in keys}
        if not any(cells.values()):
            continue  # not measured in this run (--skip-lifecycle, --only cli)
        row = [label, *(fmt_summary(cells[k]) for k in keys),
               ratio(cells["corral"], cells.get("raw")) if vs_raw else "—"]
        if lv:
            row.append(ratio(cells["libvirt"], cells["corral"]))
            row.append("—" if op in API_ROWS else ratio(cells["virsh"], cells["corral"]))
        rows.append(row)
    return render_table(header, rows)


def _mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def growth(mem: dict[int, dict[str, float]], key: str) -> float | None:
    """KiB per extra VM between the smallest and the largest count of at least 1."""
    ns = sorted(n for n in mem if n >= 1)
    if len(ns) < 2:
        return None
    return (mem[ns[-1]][key] - mem[ns[0]][key]) / (ns[-1] - ns[0])


def memory_table(res: Results) -> str:
    corral = res.memory.get("corral", {})
    lv = res.memory.get("libvirt")
    header = ["daemon memory", "corral serve RSS / PSS"]
    if lv:
        header += ["libvirtd+virtlogd RSS / PSS", "libvirt/Corral (RSS)"]

    def pair(m: dict[str, float]) -> str:
        return f"{_mib(m['rss_kib'])} / {_mib(m['pss_kib'])}"

    rows = []
    worn = res.meta.get("daemon_after_timing")
    if worn:
        row = ["0 VMs, after the timing phases (MiB)", pair(worn["corral"])]
        if lv and "libvirt" in worn:
            row += [pair(worn["libvirt"]), ratio(worn["libvirt"]["rss_kib"],
                                                 worn["corral"]["rss_kib"])]
        elif lv:
            row += ["—", "—"]
        rows.append(row)
    for n in sorted(corral):
        row = [f"{n} idle VM{'s' if n != 1 else ''}, restarted daemon (MiB)", pair(corral[n])]
        if lv:
            row += [pair(lv[n]), ratio(lv[n]["rss_kib"], corral[n]["rss_kib"])]
        rows.append(row)
    ns = sorted(n for n in corral if n >= 1)
    if len(ns) >= 2:
        row = [f"growth per extra VM, {ns[0]}→{ns[-1]} (KiB)",
               f"{growth(corral, 'rss_kib'):+.0f} / {growth(corral, 'pss_kib'):+.0f}"]
        if lv:
            row += [f"{growth(lv, 'rss_kib'):+.0f} / {growth(lv, 'pss_kib'):+.0f}", "—"]
        rows.append(row)
    if ns:
        row = [f"QEMU RSS per guest, median at {ns[-1]} (MiB)",
               _mib(corral[ns[-1]]["qemu_rss_kib_median"])]
        if lv:
            row += [_mib(lv[ns[-1]]["qemu_rss_kib_median"]), "—"]
        rows.append(row)
    return render_table(header, rows)


def paired_ratio(res: Results, op: str, num: str = "corral", den: str = "raw") -> float:
    """Median over repetitions of num/den, each pair measured back to back: steadier than
    the ratio of medians when the host's load drifts."""
    pairs = zip(res.samples[op][num], res.samples[op][den], strict=True)
    return statistics.median(a / b for a, b in pairs)


def targets(res: Results) -> list[dict[str, Any]]:
    """The published targets from the issue, each PASS, FAIL or n/a (not measured)."""
    out: list[dict[str, Any]] = []

    def check(name: str, value: float | None, limit: float, shown: str) -> None:
        status = "n/a" if value is None else ("PASS" if value <= limit else "FAIL")
        out.append({"target": name, "status": status, "value": value, "limit": limit,
                    "shown": shown if value is not None else "not measured"})

    boot, raw = res.median("boot"), res.median("boot", "raw")
    r = boot / raw if boot is not None and raw else None
    check("boot to ready at most 5% over raw QEMU", r, 1.05,
          f"Corral/raw = {r:.3f} ({fmt_num(boot or 0)} vs {fmt_num(raw or 0)} ms; paired "
          f"per repetition: {paired_ratio(res, 'boot'):.3f})" if r is not None else "")
    for op, name, limit in (("spawn", "spawn to QMP ready under 50 ms", 50),
                            ("pause", "pause through corral.Client under 1.5 ms median", 1.5),
                            ("resume", "resume through corral.Client under 1.5 ms median", 1.5),
                            ("destroy", "destroy under 30 ms", 30),
                            ("cli_pause", "CLI `corral pause` under 30 ms wall", 30),
                            ("cli_list", "CLI `corral list` under 30 ms wall", 30)):
        v = res.median(op)
        check(name, v, limit, f"{fmt_num(v)} ms" if v is not None else "")
    # ... and no slower than libvirt's own, measured in the same run
    for op, other, name in (("list", "libvirt", "`list` through the Client no slower than "
                                                "libvirt-python's"),
                            ("cli_pause", "virsh", "CLI `corral pause` faster than `virsh "
                                                   "suspend`"),
                            ("cli_list", "virsh", "CLI `corral list` faster than `virsh list`")):
        ours, theirs = res.median(op), res.median(op, other)
        ratio = ours / theirs if ours is not None and theirs else None
        check(name, ratio, 1.0, f"Corral/{other} = {ratio:.2f} ({fmt_num(ours or 0)} vs "
                                f"{fmt_num(theirs or 0)} ms)" if ratio is not None else "")
    mem = res.memory.get("corral", {})
    at20 = mem.get(20)
    rss20 = at20["rss_kib"] * 1024 / 1e6 if at20 else None
    check("daemon under 75 MB RSS with 20 VMs", rss20, 75,
          f"{rss20:.1f} MB = {at20['rss_kib'] / 1024:.1f} MiB"
          if at20 and rss20 is not None else "")
    g = growth(mem, "rss_kib")
    check("daemon under 200 KiB more RSS per extra VM", g, 200,
          f"{g:+.0f} KiB" if g is not None else "")
    return out


def report(res: Results, keys: Sequence[str]) -> str:
    m = res.meta
    lines = [
        "",
        f"Corral lifecycle benchmark: {m['host']}, {m['qemu']}, accel {m['accel']}, guest q35 "
        f"{m['memory_mib']} MiB 1 vCPU. Median (min-max); n={m['reps']} after 1 warm-up "
        f"(pause/resume n={m['pause_reps']}, CLI list n={m['cli_reps']}, API lists "
        f"n={m.get('api_lists', m['cli_reps'])}); CLI process CPU: user + system time",
        f"libvirt: {m['libvirt']}",
        f"raw QEMU argv: {m['argv_check']}",
        "",
        timing_table(res, keys),
        "",
    ]
    if res.memory:
        lines += [memory_table(res), ""]
    lines.append("targets (from the issue):")
    lines += [f"  {t['status']:<4}  {t['target']}: {t['shown']}" for t in targets(res)]
    lines.append(f"\n(total {m['seconds']} s; load average {m['loadavg_start'][0]:.2f} at start, "
                 f"{m['loadavg_end'][0]:.2f} at end)")
    return "\n".join(lines)


def write_json(res: Results, path: Path) -> None:
    summary = {op: {k: s.as_dict() for k in by if (s := res.get(op, k))}
               for op, by in res.samples.items()}
    path.write_text(json.dumps({"meta": res.meta, "samples_ms": res.samples,
                                "summary_ms": summary, "memory_kib": res.memory,
                                "targets": targets(res)}, indent=2) + "\n")
