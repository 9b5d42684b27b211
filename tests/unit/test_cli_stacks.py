"""The stack and settings commands against a real daemon (no QEMU: its VMs stay defined):
plan and apply print the plan and the progress, --json prints the events, a bad file is one
line with its line number and exit 2, and the settings can be shown and changed live."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.cli.main import main

from .served import Served, served

STACK = """\
name: quiet
disks:
  scratch: {size: 16M}
vms:
  idle:
    start: false
    memory: 128M
    disks: [scratch]
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with served(tmp_path_factory.mktemp("stacks") / "home") as d:
        yield d


def run(d: Served, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main([*args, "--socket", str(d.socket)])
    got = capsys.readouterr()
    return code, got.out, got.err


def test_plan_apply_change_and_remove(daemon: Served, capsys: pytest.CaptureFixture[str],
                                      tmp_path: Path) -> None:
    file = tmp_path / "quiet.yaml"
    file.write_text(STACK)
    code, out, _ = run(daemon, capsys, "plan", "-f", str(file))
    assert code == 0 and "2 to create" in out and "+ vm/idle: create  (line 5)" in out
    code, out, _ = run(daemon, capsys, "apply", "-f", str(file), "--dry-run")
    assert code == 0 and "+ disk/scratch: create" in out
    code, out, _ = run(daemon, capsys, "stack", "list")
    assert "no stacks" in out
    code, out, _ = run(daemon, capsys, "apply", "-f", str(file))
    assert code == 0 and "[2/2] vm/idle: create done" in out and "stack quiet: done" in out
    code, out, _ = run(daemon, capsys, "apply", "-f", str(file))
    assert "stack quiet: no changes (2 resources up to date)" in out
    file.write_text(STACK.replace("memory: 128M", "memory: 192M"))
    code, out, _ = run(daemon, capsys, "apply", "-f", str(file), "--json")
    events = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and events[-1]["ok"] and [e["event"] for e in events] == [
        "plan", "begin", "done", "end"]
    change = events[0]["plan"]["changes"][1]
    assert change["action"] == "restart" and change["fields"][0]["new"] == "192M"
    code, out, _ = run(daemon, capsys, "stack", "show", "quiet", "--json")
    assert {r["id"] for r in json.loads(out)["resources"]} == {"disk/scratch", "vm/idle"}
    code, out, _ = run(daemon, capsys, "stack", "rm", "quiet")
    assert code == 0 and "- vm/idle: remove" in out
    code, out, _ = run(daemon, capsys, "list", "--json")
    assert json.loads(out) == []


def test_a_bad_file_is_one_line_with_its_line(daemon: Served, capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text("vms:\n  a:\n    disks: [nowhere]\n")
    code, out, err = run(daemon, capsys, "apply", "-f", str(file))
    assert code == 2 and out == ""
    assert err == (f"corral: error: {file}:3: vms.a.disks[0]: no disk 'nowhere' in the stack "
                   "or the daemon\n")
    code, _, err = run(daemon, capsys, "plan", "-f", str(tmp_path / "missing.yaml"))
    assert code == 2 and "cannot read" in err
    code, out, _ = run(daemon, capsys, "stack", "rm", "nope")
    assert code == 3


def test_settings_shown_and_changed_live(daemon: Served,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(daemon, capsys, "config", "show", "--json")
    shown = {s["key"]: s for s in json.loads(out)["settings"]}
    assert code == 0 and shown["scheduler.quantum"]["live"]
    code, out, _ = run(daemon, capsys, "host", "set", "quantum", "3")
    assert code == 0 and "scheduler.quantum: 2.0 → 3.0 (until the daemon restarts)" in out
    code, out, _ = run(daemon, capsys, "config", "show")
    assert "scheduler.quantum" in out and "corral host set" in out
    code, _, err = run(daemon, capsys, "host", "set", "home", "/x")
    assert code == 2 and "cannot change while the daemon runs" in err
    code, _, err = run(daemon, capsys, "host", "set", "queue-policy", "lifo")
    assert code == 2 and "expected one of fcfs, sjf, priority, fair" in err
    code, out, _ = run(daemon, capsys, "host", "set", "quantum", "2")
    assert code == 0
