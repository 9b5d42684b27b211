"""Queueing formulas, the simulator against them, policy comparisons, and the CLI."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from corral.cli.models import register
from corral.errors import CorralError, InvalidSpec
from corral.perf.queueing import Figures, erlang_c, mg1, mm1, mmc
from corral.perf.simulate import (
    Job,
    Workload,
    compare,
    host_for,
    parse_policies,
    parse_trace,
    simulate,
)
from corral.scheduler.resources import Resources

# --- closed forms -------------------------------------------------------------------------


def test_mm1_textbook_values() -> None:
    f = mm1(0.5, 1.0)
    assert (f.utilisation, f.wait_probability, f.mean_wait, f.mean_response) == (0.5, 0.5, 1, 2)
    assert (f.throughput, f.mean_queue_length, f.mean_in_system) == (0.5, 0.5, 1.0)


def test_erlang_c_known_values() -> None:
    assert erlang_c(1, 0.7) == pytest.approx(0.7)
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
    a, c = 2.0, 3  # the direct formula
    top = a ** c / math.factorial(c) * c / (c - a)
    direct = top / (sum(a ** k / math.factorial(k) for k in range(c)) + top)
    assert erlang_c(c, a) == pytest.approx(direct)
    assert 0 < erlang_c(500, 490.0) < 1  # no overflow for large c


def test_mmc_reduces_to_mm1_and_mg1_to_both() -> None:
    for model in (mmc(0.8, 1.0, 1), mg1(0.8, 1.0, 1.0)):
        assert model.mean_response == pytest.approx(mm1(0.8, 1.0).mean_response)
    assert mg1(0.8, 1.0, 0.0).mean_wait == pytest.approx(mm1(0.8, 1.0).mean_wait / 2)
    f = mmc(2.0, 1.0, 3)
    assert f.model == "M/M/3" and f.utilisation == pytest.approx(2 / 3)
    assert f.mean_in_system == pytest.approx(f.arrival_rate * f.mean_response)  # Little


@pytest.mark.parametrize(("call", "field"), [
    (lambda: mm1(1.0, 1.0), "arrival_rate"),
    (lambda: mmc(3.5, 1.0, 3), "arrival_rate"),
    (lambda: mg1(2.0, 1.0, 0.5), "arrival_rate"),
    (lambda: mm1(-1.0, 1.0), "arrival_rate"),
    (lambda: mm1(0.5, float("nan")), "service_rate"),
    (lambda: mmc(0.5, 1.0, 0), "servers"),
    (lambda: mg1(0.5, 1.0, -1.0), "service_cv"),
])
def test_unstable_or_bad_input_is_refused(call: object, field: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        call()  # type: ignore[operator]
    assert info.value.field == field


def test_unstable_message_explains() -> None:
    with pytest.raises(InvalidSpec, match=r"ρ = λ/\(cμ\) = 1.25 ≥ 1"):
        mmc(3.75, 1.0, 3)


# --- the simulator against the closed forms ------------------------------------------------


@pytest.mark.parametrize(("arrival_rate", "servers", "jobs"), [
    (0.5, 1, 30_000), (0.8, 1, 100_000), (1.5, 3, 30_000), (2.4, 3, 100_000)])
def test_simulation_agrees_with_the_closed_forms(arrival_rate: float, servers: int,
                                                 jobs: int) -> None:
    """FCFS with 1-vCPU jobs on c vCPUs is M/M/c: the mean response time must match Erlang C
    within 5%, and utilisation and throughput within 2%.

    The response time is compared with the closed form at the rates the run actually drew
    (a control variate): at ρ = 0.8, W = 1/(μ − λ) magnifies the sampling error of λ̂ and μ̂
    about fivefold, which over 100,000 jobs alone moves W by ±5% from seed to seed. That error
    is the random numbers', not the scheduler's; what is left is what the simulator adds.
    """
    drawn = Workload(arrival_rate, 1.0, jobs=jobs, seed=1).generate()
    result = simulate(drawn, host_for(drawn, servers))
    nominal = mmc(arrival_rate, 1.0, servers)
    realised = mmc(jobs / drawn[-1].arrival, jobs / sum(j.runtime for j in drawn), servers)
    assert result.mean_response == pytest.approx(realised.mean_response, rel=0.05)
    assert result.utilisation == pytest.approx(nominal.utilisation, rel=0.02)
    assert result.throughput == pytest.approx(nominal.throughput, rel=0.02)


def test_fixed_runtimes_agree_with_pollaczek_khinchine() -> None:
    drawn = Workload(0.5, 1.0, service_cv=0.0, jobs=30_000, seed=2).generate()
    result = simulate(drawn, host_for(drawn, 1))
    assert result.mean_wait == pytest.approx(mg1(0.5, 1.0, 0.0).mean_wait, rel=0.05)


# --- policies on the same workload ----------------------------------------------------------


def test_policies_see_the_same_jobs_and_sjf_beats_fcfs() -> None:
    jobs = Workload(0.8, 1.0, jobs=4000, seed=3).generate()
    results = {r.policy: r for r in compare(jobs, host_for(jobs, 1),
                                            "fcfs,sjf,priority,fair,fcfs+backfill")}
    assert all(r.jobs == 4000 for r in results.values())
    assert results["sjf"].mean_response < 0.8 * results["fcfs"].mean_response
    assert results["sjf"].max_wait > results["fcfs"].max_wait  # the price: long jobs wait
    utilisations = {round(r.utilisation, 6) for r in results.values()}
    assert len(utilisations) == 1  # every policy is work-conserving for 1-slot jobs


def test_fair_protects_a_small_owner_from_a_burst() -> None:
    trace = [{"arrival": 0.0, "runtime": 1.0, "owner": "batch"} for _ in range(50)]
    trace += [{"arrival": 1.0 + 2 * i, "runtime": 1.0, "owner": "alice"} for i in range(5)]
    jobs = parse_trace(trace)
    fcfs, fair = compare(jobs, host_for(jobs, 1), "fcfs,fair")
    assert fcfs.owner_mean_wait["alice"] >= 45  # behind the whole burst
    assert fair.owner_mean_wait["alice"] <= 1  # half the slot is hers: at most one job ahead
    assert fair.owner_mean_wait["batch"] < fcfs.owner_mean_wait["batch"] + 5


def test_backfill_fills_the_gap_before_a_big_job() -> None:
    trace = [{"arrival": 0, "runtime": 10, "cpus": 2, "expected_runtime": 10},
             {"arrival": 1, "runtime": 10, "cpus": 4, "expected_runtime": 10},
             *({"arrival": 2, "runtime": 4, "cpus": 1, "expected_runtime": 4}
               for _ in range(4))]
    jobs = parse_trace(trace)
    plain, backfilled = compare(jobs, Resources(4, 0, 0), "fcfs,fcfs+backfill")
    assert backfilled.mean_response < plain.mean_response
    assert plain.max_wait == 18  # the small jobs, behind the big one
    assert backfilled.max_wait == 9  # the big job, which starts at 10 as it would anyway


# --- traces and policy lists ----------------------------------------------------------------


def test_trace_parsing() -> None:
    jobs = parse_trace({"jobs": [
        {"arrival": 105.0, "start": 106.0, "end": 110.0, "memory": "256M", "id": "x"},
        {"arrival": 100.0, "runtime": 2, "memory": 1024, "owner": "bob", "priority": 3},
    ]})
    assert jobs == [Job(0.0, 2.0, 1, 1024, "bob", 3, None),
                    Job(5.0, 4.0, 1, 256 << 20, "user", 0, None)]
    for bad, where in [([], "trace"), ([{"arrival": 0}], "trace[0].runtime"),
                       ([{"arrival": 0, "runtime": 1, "colour": "red"}], "trace[0].colour"),
                       ([{"arrival": 0, "runtime": -1}], "trace[0]"), ([1], "trace[0]")]:
        with pytest.raises(InvalidSpec) as info:
            parse_trace(bad)
        assert info.value.field == where


def test_a_job_larger_than_the_host_is_refused() -> None:
    jobs = parse_trace([{"arrival": 0, "runtime": 1, "cpus": 8}])
    with pytest.raises(InvalidSpec, match="wait forever"):
        simulate(jobs, Resources(4, 0, 0))


def test_policy_lists() -> None:
    assert parse_policies("fcfs, sjf+backfill") == [("fcfs", False), ("sjf", True)]
    for bad in ("lottery", "fcfs+magic", ","):
        with pytest.raises(InvalidSpec):
            parse_policies(bad)


# --- the command line -----------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket")
    js = argparse.ArgumentParser(add_help=False)
    js.add_argument("--json", action="store_true")
    top = argparse.ArgumentParser(prog="corral")
    register(top.add_subparsers(dest="command", required=True), common, js)
    return top


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    args = parser().parse_args(argv)
    assert args.func(args) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["model", "model mm1", "model mmc", "model mg1",
                                     "simulate"])
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args([*command.split(), "--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: corral " + command)
    assert len(out.splitlines()) > 8


def test_model_prints_figures(capsys: pytest.CaptureFixture[str]) -> None:
    out = run(["model", "mmc", "--arrival-rate", "2", "--service-rate", "1", "--servers", "3"],
              capsys)
    assert out.startswith("M/M/3: λ = 2/s, μ = 1/s, c = 3")
    assert "mean response time W" in out and "1.444 s" in out
    data = json.loads(run(["model", "mg1", "--arrival-rate", "0.5", "--service-rate", "1",
                           "--service-cv", "0", "--json"], capsys))
    assert Figures(**data) == mg1(0.5, 1.0, 0.0)


def test_model_refuses_an_unstable_queue(capsys: pytest.CaptureFixture[str]) -> None:
    args = parser().parse_args(["model", "mm1", "--arrival-rate", "2", "--service-rate", "1"])
    with pytest.raises(CorralError, match="grows without bound"):
        args.func(args)


def test_simulate_compares_policies(capsys: pytest.CaptureFixture[str]) -> None:
    out = run(["simulate", "--arrival-rate", "2", "--service-mean", "1.2", "--slots", "3",
               "--jobs", "500", "--policies", "fcfs,sjf"], capsys)
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["POLICY", "MEAN", "RESP"]
    assert [line.split()[0] for line in lines[1:3]] == ["fcfs", "sjf"]
    assert lines[3].startswith("M/M/3 theory")
    data = json.loads(run(["simulate", "--arrival-rate", "2", "--service-mean", "1.2",
                           "--slots", "3", "--jobs", "500", "--seed", "4", "--json"], capsys))
    assert [p["policy"] for p in data["policies"]] == ["fcfs", "sjf", "priority", "fair"]
    assert data["theory"]["model"] == "M/M/3" and data["workload"]["seed"] == 4


def test_simulate_a_trace_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps([{"arrival": i, "runtime": 2, "memory": "1G"}
                                 for i in range(20)]))
    data = json.loads(run(["simulate", "--trace", str(trace), "--slots", "4",
                           "--host-memory", "1G", "--policies", "fcfs", "--json"], capsys))
    assert data["theory"] is None and data["policies"][0]["jobs"] == 20
    assert data["policies"][0]["mean_wait"] > 0  # 1 GiB of memory: one job at a time
    for argv, match in [(["simulate", "--trace", str(tmp_path / "none.json")], "cannot read"),
                        (["simulate", "--slots", "2"], "--arrival-rate")]:
        args = parser().parse_args(argv)
        with pytest.raises(InvalidSpec, match=match):
            args.func(args)
