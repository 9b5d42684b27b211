"""``corral pool create|list|show|resize|rm|recommend``: warm pools of paused clones of a
memory snapshot, handed out by ``corral run NAME --pool P`` in milliseconds."""

from __future__ import annotations

import argparse

from corral import errors
from corral.cli.common import Parents, client, command, out
from corral.cli.formatter import Formatter

TYPE_CHECKING = False  # typing is slow to import; the CLI must start in milliseconds
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

EPILOG = """\
examples:
  corral run base --memory 256M && corral snapshot create base warm --memory --template
  corral pool create py --from-snapshot base:warm --size 4 --max 16
  corral run job1 --pool py                 a running VM at once; the pool refills
  corral run --rm --pool py -- python3 -c 'print(42)'
  corral pool show py                       free clones, hand-outs, misses, refill time
  corral pool recommend --arrival-rate 2 --runtime 30 --target-wait 0.05 --pool py
  corral pool resize py 8; corral pool rm py
"""


def _secs(v: float | None, unit: str = "s") -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.1f} ms" if unit == "ms" else f"{v:.3g} s"


def pool_table(pools: Sequence[Mapping[str, Any]]) -> str:
    if not pools:
        return "no pools; make one with 'corral pool create'"
    rows = [("NAME", "SOURCE", "FREE/SIZE", "MAX", "HANDOUTS", "MISSES", "REFILL", "NOTE")]
    rows += [(p["name"], p["source"], f"{p['free']}/{p['size']}", str(p["max"]),
              str(p["handouts"]), str(p["misses"]), _secs(p["refill_seconds"]),
              p["note"] or "") for p in pools]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def pool_detail(p: Mapping[str, Any]) -> str:
    lines = [("name", p["name"]), ("project", str(p.get("project", "default"))),
             ("source", p["source"]),
             ("size", f"{p['size']} (max {p['max']}{', autosized' if p['autosize'] else ''}"
                      f"{', refills ahead of the queue' if p.get('ahead_of_queue') else ''})"),
             ("free", f"{p['free']}" + (f" (making {p['filling']})" if p["filling"] else "")),
             ("hand-outs", str(p["handouts"])), ("misses", str(p["misses"])),
             ("replaced", f"{p['replaced']} (crashed while waiting)"),
             ("refill time", _secs(p["refill_seconds"])),
             ("hand-out", _secs(p["handout_seconds"], "ms") + " median request → running"),
             ("clones", ", ".join(p["clones"]) or "-")]
    if p["note"]:
        lines.append(("note", p["note"]))
    return "\n".join(f"{k + ':':13}{v}" for k, v in lines)


def cmd_create(args: argparse.Namespace) -> int:
    p = client(args).pool_create(args.name, args.from_snapshot, args.size, args.max,
                                 args.autosize, args.target_wait, args.ahead_of_queue)
    return out(args, p, f"pool {p['name']} of {p['source']} created; it fills to "
                        f"{p['size']} in the background ('corral pool show {p['name']}')")


def cmd_list(args: argparse.Namespace) -> int:
    pools = client(args).pool_list()
    return out(args, pools, pool_table(pools))


def cmd_show(args: argparse.Namespace) -> int:
    p = client(args).pool_show(args.name)
    return out(args, p, pool_detail(p))


def cmd_resize(args: argparse.Namespace) -> int:
    p = client(args).pool_resize(args.name, args.size, args.max, args.autosize,
                                 args.ahead_of_queue)
    return out(args, p, f"pool {p['name']} holds {p['free']} of {p['size']} now")


def cmd_rm(args: argparse.Namespace) -> int:
    removed = client(args).pool_rm(args.name)
    return out(args, {"removed": removed}, f"pool {args.name} removed"
                                           f"{' with ' + ', '.join(removed) if removed else ''}")


def _trace(path: str) -> tuple[float, float]:
    import json

    from corral.perf import pools as model
    from corral.perf.simulate import parse_trace

    try:
        with open(path) as f:
            jobs = parse_trace(json.load(f))
    except (OSError, ValueError) as err:
        raise errors.InvalidSpec("from_trace", f"cannot read trace {path}: {err}") from err
    return model.from_trace([j.arrival for j in jobs], [j.runtime for j in jobs])


def cmd_recommend(args: argparse.Namespace) -> int:
    rate, runtime = args.arrival_rate, args.runtime
    if args.from_trace:
        rate, runtime = _trace(args.from_trace)
    if rate is None:
        raise errors.InvalidSpec("arrival_rate", "give --arrival-rate or --from-trace")
    rec = client(args).pool_recommend(rate, args.target_wait, runtime, args.refill_time,
                                      args.pool)
    lines = [f"pool size {rec['size']}: mean wait {rec['mean_wait'] * 1000:.1f} ms "
             f"(target {rec['target_wait'] * 1000:.1f} ms), a miss in "
             f"{rec['miss_probability'] * 100:.1f}% of requests",
             f"model: M/M/c (Erlang C), λ = {rec['arrival_rate']:.3g}/s, refill "
             f"{rec['refill_time']:.3g} s, offered load {rec['offered_load']:.3g}"]
    if rec["running_vms"] is not None:
        lines.append(f"VMs handed out and running at once, on average: "
                     f"{rec['running_vms']:.3g} (λ × runtime)")
    lines.append("size  mean wait  miss")
    lines += [f"{int(c['size']):>4}  {c['mean_wait'] * 1000:>6.1f} ms  "
              f"{c['miss_probability'] * 100:5.1f}%" for c in rec["curve"]]
    return out(args, rec, "\n".join(lines))


def register(sub: Any, pa: Parents) -> None:
    """Add ``pool`` and its verbs."""
    p = sub.add_parser("pool", help="warm pools: paused clones of a snapshot, handed out at once",
                       formatter_class=Formatter, epilog=EPILOG,
                       description="A warm pool keeps clones of a memory snapshot restored "
                                   "and paused; 'corral run NAME --pool P' hands one out in "
                                   "milliseconds and the pool refills in the background "
                                   "(never ahead of VMs waiting in the admission queue, "
                                   "unless made --ahead-of-queue).")
    psub = p.add_subparsers(dest="pool_command", metavar="COMMAND", required=True)
    c = command(psub, pa, "create", cmd_create, "make a pool of a memory snapshot", vm=False)
    c.add_argument("name", metavar="NAME", help="the pool's name (at most 24 characters)")
    c.add_argument("--from-snapshot", metavar="VM:SNAPSHOT", required=True,
                   help="the memory snapshot its clones start from")
    c.add_argument("--size", type=int, default=2, help="clones kept ready (default 2)")
    c.add_argument("--max", type=int, help="the most --autosize may grow it to")
    c.add_argument("--autosize", action="store_true",
                   help="let the daemon size it from the requests it sees (Erlang C)")
    c.add_argument("--target-wait", type=float, metavar="S",
                   help="with --autosize: mean wait to aim for (default 0.05 s)")
    c.add_argument("--ahead-of-queue", action="store_true",
                   help="let its refills take capacity that VMs waiting in the admission "
                        "queue need (by default a refill waits until the queue is empty)")
    command(psub, pa, "list", cmd_list, "list pools", vm=False)
    c = command(psub, pa, "show", cmd_show, "a pool's clones and figures", vm=False)
    c.add_argument("name", metavar="NAME", help="the pool")
    c = command(psub, pa, "resize", cmd_resize, "change a pool's size", vm=False)
    c.add_argument("name", metavar="NAME", help="the pool")
    c.add_argument("size", type=int, help="clones to keep ready")
    c.add_argument("--max", type=int, help="the most --autosize may grow it to")
    c.add_argument("--autosize", action=argparse.BooleanOptionalAction, default=None,
                   help="let the daemon size it (or stop)")
    c.add_argument("--ahead-of-queue", action=argparse.BooleanOptionalAction, default=None,
                   help="let its refills go ahead of the admission queue (or stop)")
    c = command(psub, pa, "rm", cmd_rm, "remove a pool and its free clones", vm=False,
                aliases=("delete",))
    c.add_argument("name", metavar="NAME", help="the pool")
    c = command(psub, pa, "recommend", cmd_recommend,
                "the smallest pool that meets a target wait (Erlang C)", vm=False,
                desc="The pool size for requests arriving at --arrival-rate per second "
                     "(or as in a recorded --from-trace), so that the mean wait for a VM is "
                     "at most --target-wait seconds. Each hand-out keeps a place of the pool "
                     "busy for one refill (a warm start), so the pool is an M/M/c queue.")
    c.add_argument("--arrival-rate", type=float, metavar="λ", help="requests per second")
    c.add_argument("--runtime", type=float, metavar="S",
                   help="seconds each VM handed out runs (for the VMs running at once)")
    c.add_argument("--target-wait", type=float, metavar="W", required=True,
                   help="mean wait to meet, in seconds")
    c.add_argument("--refill-time", type=float, metavar="R",
                   help="seconds to make a clone (default: as measured by --pool)")
    c.add_argument("--pool", metavar="POOL", help="use this pool's measured refill time")
    c.add_argument("--from-trace", metavar="FILE",
                   help="arrival rate and runtime from a trace ('corral trace --json')")
