"""``corral pool`` and ``run --pool`` against a real daemon (no QEMU): the model through the
CLI, and bad input answered in one line with its exit code, creating nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.cli.main import main
from corral.client import Client

from .served import Served, served


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with served(tmp_path_factory.mktemp("pools") / "home") as d:
        with Client(d.socket) as c:
            c.create("defined1")
        yield d


def test_recommend_through_the_cli(daemon: Served, capsys: pytest.CaptureFixture[str],
                                   tmp_path: Path) -> None:
    s = ["--socket", str(daemon.socket)]
    assert main(["pool", "recommend", "--arrival-rate", "2", "--refill-time", "1.5",
                 "--target-wait", "0.05", "--runtime", "30", "--json", *s]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["size"] == 6 and rec["mean_wait"] <= 0.05 and rec["running_vms"] == 60
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps([{"arrival": i * 0.5, "runtime": 10} for i in range(41)]))
    assert main(["pool", "recommend", "--from-trace", str(trace), "--refill-time", "1.5",
                 "--target-wait", "0.05", *s]) == 0
    assert "pool size 6" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "code"), [
    (["pool", "recommend", "--target-wait", "0.1", "--refill-time", "1"], 2),
    (["pool", "recommend", "--arrival-rate", "2", "--target-wait", "0.1"], 2),
    (["pool", "recommend", "--arrival-rate", "-1", "--target-wait", "0.1",
      "--refill-time", "1"], 2),
    (["pool", "recommend", "--arrival-rate", "2", "--target-wait", "0.1", "--pool", "nope"], 3),
    (["pool", "create", "p", "--from-snapshot", "nosep", "--size", "1"], 2),
    (["pool", "create", "p", "--from-snapshot", "ghost:s", "--size", "1"], 3),
    (["pool", "create", "p", "--from-snapshot", "defined1:s", "--size", "1"], 3),
    (["pool", "create", "p", "--from-snapshot", "defined1:s", "--size", "999"], 2),
    (["pool", "create", "Bad", "--from-snapshot", "defined1:s"], 2),
    (["pool", "show", "nope"], 3),
    (["pool", "resize", "nope", "2"], 3),
    (["pool", "rm", "nope"], 3),
    (["run", "x", "--pool", "nope"], 3),
    (["run", "--rm", "--pool", "nope", "--", "true"], 3),
])
def test_bad_pool_input(daemon: Served, capsys: pytest.CaptureFixture[str], argv: list[str],
                        code: int) -> None:
    cut = 2 if argv[0] == "pool" else 1
    assert main([*argv[:cut], "--socket", str(daemon.socket), *argv[cut:]]) == code
    err = capsys.readouterr().err
    assert err.startswith("corral: error: ") and err.count("\n") == 1, err
    with Client(daemon.socket) as c:
        assert c.pool_list() == [] and [v["name"] for v in c.list()] == ["defined1"]
