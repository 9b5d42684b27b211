"""``corral model`` and ``corral simulate``: what a workload will wait, in theory and in a
simulation of Corral's own scheduler. Both run in the CLI process; no daemon is needed.

Like the rest of the CLI this module imports only the standard library when the parser is
built; the queueing models and simpy are imported when a command runs.
"""

from __future__ import annotations

import argparse
import json

from corral.errors import InvalidSpec

TYPE_CHECKING = False  # typing is slow to import; the CLI must start in milliseconds
if TYPE_CHECKING:
    from corral.perf.queueing import Figures
    from corral.perf.simulate import PolicyResult

MODEL_EPILOG = """\
formulas (λ arrival rate, μ service rate per server, c servers, ρ = λ/(cμ)):
  M/M/1   W = 1/(μ − λ)                     Wq = ρ/(μ − λ)
  M/M/c   Wq = C(c, λ/μ)/(cμ − λ)           C: Erlang C, the probability of waiting
  M/G/1   Wq = (1 + cv²)/2 · ρ/(1 − ρ)/μ    Pollaczek–Khinchine; cv = σ/mean of runtimes
  all     W = Wq + 1/μ,  L = λW,  Lq = λWq  (Little's law); stable only when ρ < 1

examples:
  corral model mm1 --arrival-rate 0.5 --service-rate 1
  corral model mmc --arrival-rate 2 --service-rate 1 --servers 3
  corral model mg1 --arrival-rate 0.5 --service-rate 1 --service-cv 0.5 --json
"""

SIMULATE_EPILOG = """\
policies:
  fcfs       first come, first served
  sjf        shortest declared runtime first, then smallest
  priority   highest priority first; waiting adds --aging-rate points per second
  fair       round robin across owners
  P+backfill let smaller requests start past a blocked head when that cannot delay it

trace file: a JSON list of {"arrival": S, "runtime": S (or "start"/"end"), "cpus": N,
  "memory": BYTES|"256M", "owner": NAME, "priority": N, "expected_runtime": S}

examples:
  corral simulate --arrival-rate 2 --service-mean 1.2 --slots 3 --jobs 5000
  corral simulate --arrival-rate 2 --service-mean 1.2 --slots 3 --policies fcfs,sjf --json
  corral simulate --trace requests.json --slots 8 --host-memory 16G --policies fcfs,fcfs+backfill
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Wraps one-paragraph descriptions; keeps the hand-laid-out epilogs as written."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=100)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return super()._fill_text(text, width, indent)
        return argparse.HelpFormatter._fill_text(self, text, width, indent)


def _rate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arrival-rate", type=float, required=True, metavar="λ",
                   help="requests arriving per second (Poisson)")
    p.add_argument("--service-rate", type=float, required=True, metavar="μ",
                   help="requests one server completes per second (1 / mean runtime)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             common: argparse.ArgumentParser, js: argparse.ArgumentParser) -> None:
    """Add ``model`` and ``simulate`` to the ``corral`` parser.

    ``common`` (the daemon's socket) is not used: these commands run locally.
    """
    p = sub.add_parser(
        "model", help="queueing figures for a workload: M/M/1, M/M/c, M/G/1",
        formatter_class=_Formatter, epilog=MODEL_EPILOG,
        description="Compute the textbook steady-state figures of a queue: utilisation, "
                    "probability of waiting, mean wait, mean response time, throughput and "
                    "mean queue length. Times are in seconds.")
    msub = p.add_subparsers(dest="model", metavar="MODEL", required=True)
    m = msub.add_parser("mm1", parents=[js], formatter_class=_Formatter,
                        help="Poisson arrivals, exponential runtimes, one server",
                        description="M/M/1: Poisson arrivals, exponential runtimes, one server.")
    _rate_options(m)
    m.set_defaults(func=cmd_model)
    m = msub.add_parser("mmc", parents=[js], formatter_class=_Formatter,
                        help="Poisson arrivals, exponential runtimes, c servers (Erlang C)",
                        description="M/M/c: Poisson arrivals, exponential runtimes, c servers; "
                                    "the probability of waiting is Erlang's C formula.")
    _rate_options(m)
    m.add_argument("--servers", type=int, required=True, metavar="C",
                   help="servers: VMs that may run at once")
    m.set_defaults(func=cmd_model)
    m = msub.add_parser("mg1", parents=[js], formatter_class=_Formatter,
                        help="Poisson arrivals, any runtime distribution, one server (P-K)",
                        description="M/G/1: Poisson arrivals, runtimes of any distribution, one "
                                    "server; the mean wait is the Pollaczek–Khinchine formula.")
    _rate_options(m)
    m.add_argument("--service-cv", type=float, default=1.0, metavar="CV",
                   help="coefficient of variation of runtimes, σ/mean (default 1: "
                        "exponential; 0: all equal)")
    m.set_defaults(func=cmd_model)

    p = sub.add_parser(
        "simulate", parents=[js], formatter_class=_Formatter, epilog=SIMULATE_EPILOG,
        help="simulate a workload through each scheduling policy and compare them",
        description="Run a discrete-event simulation of a workload, or of a recorded trace "
                    "of requests, through Corral's own admission queue, once per policy, and "
                    "print mean and 95th percentile response time, mean and maximum wait, "
                    "throughput and utilisation side by side. Every policy sees the same jobs. "
                    "Each job of a synthetic workload needs one slot and declares its true "
                    "runtime; when the closed form applies (exponential runtimes: M/M/c, or "
                    "one slot: M/G/1) a row of theory is printed beside the policies.")
    g = p.add_argument_group("synthetic workload")
    g.add_argument("--arrival-rate", type=float, metavar="λ",
                   help="jobs arriving per second (Poisson)")
    g.add_argument("--service-mean", type=float, metavar="S", help="mean runtime in seconds")
    g.add_argument("--service-cv", type=float, default=1.0, metavar="CV",
                   help="coefficient of variation of runtimes (default 1: exponential)")
    g.add_argument("--jobs", type=int, default=5000, metavar="N", help="jobs (default 5000)")
    g.add_argument("--owners", type=int, default=3, metavar="N",
                   help="owners the jobs are spread over, for fair (default 3)")
    g.add_argument("--seed", type=int, default=1, metavar="N", help="random seed (default 1)")
    p.add_argument("--trace", metavar="FILE", help="replay a recorded trace (JSON) instead")
    p.add_argument("--slots", type=int, default=1, metavar="C",
                   help="vCPUs of the simulated host; 1-vCPU jobs make it C slots (default 1)")
    p.add_argument("--host-memory", metavar="SIZE",
                   help="memory of the simulated host (default: enough for every job)")
    p.add_argument("--policies", default="fcfs,sjf,priority,fair", metavar="LIST",
                   help="comma-separated policies (default fcfs,sjf,priority,fair)")
    p.add_argument("--aging-rate", type=float, default=1 / 60, metavar="R",
                   help="priority points a waiting job gains per second (default 1/60)")
    c = p.add_argument_group("a cluster on paper")
    c.add_argument("--hosts", type=int, metavar="N",
                   help="simulate the cluster's admission queue and placement over N "
                        "synthetic hosts instead (with --arrival-rate, --service-mean, "
                        "--jobs), e.g. --hosts 1000 --arrival-rate 50 --service-mean 60 "
                        "--jobs 100000")
    c.add_argument("--weigher", choices=["spread", "pack"], default="spread",
                   help="placement's weigher for --hosts (default spread)")
    p.set_defaults(func=cmd_simulate)


def _simulate_cluster(args: argparse.Namespace) -> int:
    from corral.perf import clustersim

    if args.arrival_rate is None or args.service_mean is None:
        raise InvalidSpec("arrival-rate", "--hosts needs --arrival-rate and --service-mean")
    run = clustersim.simulate_cluster(args.hosts, args.arrival_rate, args.service_mean,
                                      args.jobs, args.seed, args.weigher)
    if args.json:
        _dump(run.as_dict())
    else:
        print(clustersim.table(run))
    return 0


def _dump(data: object) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def figures_text(f: Figures) -> str:
    """The figures of one model, one per line."""
    lines = [
        ("utilisation ρ", f"{f.utilisation:.4g}"),
        ("probability of waiting", f"{f.wait_probability:.4g}"),
        ("mean wait Wq", f"{f.mean_wait:.4g} s"),
        ("mean response time W", f"{f.mean_response:.4g} s"),
        ("throughput", f"{f.throughput:.4g} /s"),
        ("mean queue length Lq", f"{f.mean_queue_length:.4g}"),
        ("mean number in system L", f"{f.mean_in_system:.4g}"),
    ]
    head = f"{f.model}: λ = {f.arrival_rate:g}/s, μ = {f.service_rate:g}/s, c = {f.servers}"
    width = max(len(k) for k, _ in lines)
    return "\n".join([head, *(f"  {k:<{width}}  {v}" for k, v in lines)])


def cmd_model(args: argparse.Namespace) -> int:
    from corral.perf import queueing

    if args.model == "mm1":
        figures = queueing.mm1(args.arrival_rate, args.service_rate)
    elif args.model == "mmc":
        figures = queueing.mmc(args.arrival_rate, args.service_rate, args.servers)
    else:
        figures = queueing.mg1(args.arrival_rate, args.service_rate, args.service_cv)
    if args.json:
        _dump(figures.as_dict())
    else:
        print(figures_text(figures))
    return 0


def policy_table(results: list[PolicyResult], theory: Figures | None = None) -> str:
    """Policies side by side; ``theory`` adds a row of closed-form figures to compare with."""
    rows = [("POLICY", "MEAN RESP", "P95 RESP", "MEAN WAIT", "MAX WAIT", "THROUGHPUT", "UTIL")]
    for r in results:
        rows.append((r.policy, f"{r.mean_response:.3f}", f"{r.p95_response:.3f}",
                     f"{r.mean_wait:.3f}", f"{r.max_wait:.3f}", f"{r.throughput:.3f}/s",
                     f"{r.utilisation:.1%}"))
    if theory is not None:
        rows.append((f"{theory.model} theory", f"{theory.mean_response:.3f}", "-",
                     f"{theory.mean_wait:.3f}", "-", f"{theory.throughput:.3f}/s",
                     f"{theory.utilisation:.1%}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True)))
                     for row in rows) + "\n(times in seconds)"


def _read_trace(path: str) -> object:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as err:
        raise InvalidSpec("trace", f"cannot read {path}: {err.strerror}") from err
    except ValueError as err:
        raise InvalidSpec("trace", f"{path} is not JSON: {err}") from err


def cmd_simulate(args: argparse.Namespace) -> int:
    from corral.domain.sizes import parse_size
    from corral.perf import queueing, simulate

    if args.hosts is not None:
        return _simulate_cluster(args)
    theory = None
    if args.trace:
        jobs = simulate.parse_trace(_read_trace(args.trace))
        workload: dict[str, object] = {"trace": args.trace, "jobs": len(jobs)}
    else:
        if args.arrival_rate is None or args.service_mean is None:
            raise InvalidSpec("arrival-rate", "give --arrival-rate and --service-mean, or "
                                              "--trace FILE")
        spec = simulate.Workload(args.arrival_rate, args.service_mean, args.service_cv,
                                 args.jobs, args.owners, seed=args.seed)
        jobs = spec.generate()
        workload = {"arrival_rate": spec.arrival_rate, "service_mean": spec.service_mean,
                    "service_cv": spec.service_cv, "jobs": spec.jobs, "owners": spec.owners,
                    "seed": spec.seed}
        rate = 1 / spec.service_mean
        if spec.arrival_rate < args.slots * rate:
            if spec.service_cv == 1:
                theory = queueing.mmc(spec.arrival_rate, rate, args.slots)
            elif args.slots == 1:
                theory = queueing.mg1(spec.arrival_rate, rate, spec.service_cv)
    memory = None if args.host_memory is None else parse_size("host-memory", args.host_memory)
    host = simulate.host_for(jobs, args.slots, memory)
    results = simulate.compare(jobs, host, args.policies, aging_rate=args.aging_rate)
    if args.json:
        _dump({"workload": workload, "host": host.as_dict(),
               "theory": None if theory is None else theory.as_dict(),
               "policies": [r.as_dict() for r in results]})
    else:
        print(policy_table(results, theory))
    return 0
