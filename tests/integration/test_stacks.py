"""Stacks on real guests through the CLI: every example is applied and torn down (the web
server answers through its port forward, the farm's and the classroom's VMs start warm,
each student has its own key), a change of memory restarts its VM and a new forward is added
live, a daemon killed in the middle of an apply is continued without duplicates, and
removal leaves no host object behind."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, Daemon, running_daemon
from tests.integration.netcheck import network_leftovers
from tests.integration.test_networks import free_port, http_get, until

EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def d(image_path: str) -> Iterator[Daemon]:
    with running_daemon(image_path) as daemon:
        yield daemon
        for s in daemon.client.stack_list():
            list(daemon.client.stack_rm(s["name"]))


def ok(d: Daemon, *args: str) -> str:
    res = d.cli(*args, timeout=300)
    assert res.returncode == 0, f"corral {' '.join(args)}: {res.stderr}\n{res.stdout}"
    return res.stdout


def example(tmp_path: Path, name: str, *subs: tuple[str, str]) -> str:
    text = (EXAMPLES / name).read_text()
    for old, new in subs:
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_web_and_db_behind_a_router_answer_through_the_forward(d: Daemon,
                                                               tmp_path: Path) -> None:
    port, port2 = free_port(), free_port()
    before = set(network_leftovers())  # other daemons' objects on this machine, if any
    file = example(tmp_path, "web-db.yaml", ("host_port: 18080", f"host_port: {port}"))
    out = ok(d, "apply", "-f", file)
    assert "6 to create" in out and "stack web-db: done" in out, out
    assert "hello-from-web" in http_get("127.0.0.1", port)
    assert "no changes (6 resources up to date)" in ok(d, "apply", "-f", file)

    changed = example(tmp_path, "web-db.yaml",
                      ("  db:\n    memory: 256M", "  db:\n    memory: 320M"),
                      ("      - {proto: tcp, host_port: 18080, vm: web, port: 80}\n",
                       f"      - {{proto: tcp, host_port: {port}, vm: web, port: 80}}\n"
                       f"      - {{proto: tcp, host_port: {port2}, vm: web, port: 80}}\n"))
    plan = ok(d, "plan", "-f", changed)
    assert "memory: 256M → 320M (needs restart)" in plan, plan
    assert f"+ forward/gw:tcp:{port2}: create" in plan and "vm/web" not in plan, plan
    ok(d, "apply", "-f", changed)
    assert d.client.get("db")["memory_bytes"] == 320 << 20
    assert d.client.get("db")["state"] == "running"
    assert "hello-from-web" in http_get("127.0.0.1", port2)  # the new forward, made live
    assert "hello-from-web" in http_get("127.0.0.1", port)
    shown = json.loads(ok(d, "stack", "show", "web-db", "--json"))
    assert {r["id"] for r in shown["resources"]} >= {"vm/db", "vm/web", "router/gw"}

    out = ok(d, "stack", "rm", "web-db")
    assert "stack web-db: done" in out
    assert d.client.list() == [] and d.client.network_list() == []
    assert d.client.router_list() == [] and d.client.stack_list() == []
    assert set(network_leftovers()) <= before


def test_a_batch_farm_of_warm_clones(d: Daemon, tmp_path: Path) -> None:
    events = [json.loads(line) for line in
              ok(d, "apply", "-f", str(EXAMPLES / "batch-farm.yaml"), "--json").splitlines()]
    assert events[-1]["ok"], events[-1]
    took = {e["id"]: e["seconds"] for e in events if e["event"] == "done"}
    workers = [f"worker-{i}" for i in range(1, 5)]
    for w in workers:
        vm = d.client.get(w)
        assert vm["state"] == "running" and vm["ready"]
        assert d.client.exec(w, ["true"])["exitcode"] == 0
    assert set(took) == {"vm/template", "snapshot/template:ready", *(f"vm/{w}" for w in workers)}
    warm = {e["vm"] for e in d.client.events() if e["kind"] == "warm_start_requested"}
    assert warm == set(workers)
    ok(d, "stack", "rm", "batch-farm")
    assert d.client.list() == []


def test_a_classroom_of_ten_with_their_own_keys(d: Daemon) -> None:
    file = EXAMPLES / "classroom.yaml"
    # eleven vCPUs: more than a small host's default 4 per CPU; changed live, as an event
    assert "scheduler.cpu_ratio: 4.0 → 8.0" in ok(d, "host", "set", "cpu-ratio", "8")
    assert any(e["kind"] == "setting_changed" for e in d.client.events(0, "host"))
    ok(d, "apply", "-f", str(file))
    text = file.read_text()
    for i in range(1, 11):
        name = f"student-{i:02d}"
        keys = d.client.exec(name, ["cat", "/root/.ssh/authorized_keys"])["stdout"].decode()
        assert keys.strip().endswith(name) and keys.strip().split()[1] in text
        assert len(keys.strip().splitlines()) == 1
    ok(d, "stack", "rm", "classroom")
    assert d.client.list() == []


def test_an_apply_cut_short_by_a_daemon_kill_is_continued(d: Daemon, tmp_path: Path) -> None:
    file = tmp_path / "kill.yaml"
    file.write_text("vms:\n  k:\n    count: 3\n    memory: 192M\n")
    events = d.client.stack_apply(file.read_text(), str(file))
    for e in events:
        if e["event"] == "done":
            break  # one VM made, the others on their way
    assert d.proc is not None
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    d.proc = None
    d.start()
    shown = d.client.stack_show("kill")
    assert shown["status"] == "applying" and shown["pending"], shown
    out = ok(d, "apply", "-f", str(file))
    assert "stack kill: done" in out, out
    names = sorted(v["name"] for v in d.client.list())
    assert names == ["k-1", "k-2", "k-3"]
    assert all(until(lambda n=n: d.client.get(n)["ready"], 60) for n in names)
    assert "no changes" in ok(d, "apply", "-f", str(file))
    ok(d, "stack", "rm", "kill")
    assert d.client.list() == []


def test_bad_files_stop_before_anything_is_made(d: Daemon, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("networks:\n  n: {subnet: 10.62.0.0/24}\nvms:\n  a:\n"
                   "    nics: [{network: n, ip: 10.63.0.5}]\n")
    res = d.cli("apply", "-f", str(bad))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"{bad}:5: vms.a.nics[0].ip: 10.63.0.5 is not a host address" in res.stderr
    assert d.client.list() == [] and d.client.network_list() == []
    schema = json.loads(ok(d, "stack", "schema"))
    assert "vms" in schema["properties"] and schema["additionalProperties"] is False


def test_concurrent_applies_of_one_stack_are_refused(d: Daemon, tmp_path: Path) -> None:
    file = tmp_path / "twice.yaml"
    file.write_text("vms:\n  t:\n    memory: 192M\n")
    events = d.client.stack_apply(file.read_text(), str(file))
    assert next(events)["event"] == "plan"
    res = d.cli("apply", "-f", str(file))
    assert res.returncode == 5 and "busy" in res.stderr, res.stderr
    assert [e for e in events][-1]["ok"]
    t0 = time.monotonic()
    ok(d, "stack", "rm", "twice")
    assert time.monotonic() - t0 < 60


def test_a_daemon_takes_its_settings_from_file_environment_and_flags(image_path: str,
                                                                     tmp_path: Path) -> None:
    import subprocess

    from tests.integration.conftest import CORRAL

    bad = tmp_path / "bad.toml"
    bad.write_text("[scheduler]\ncpu_ratio = 2.0\n\nqueue_polcy = \"sjf\"\n")
    res = subprocess.run([CORRAL, "serve", "--config", str(bad)], capture_output=True,
                         text=True, timeout=30,
                         env={**os.environ, "CORRAL_HOME": str(tmp_path / "h")})
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip() == (f"corral: error: {bad}:4: unknown setting "
                                  "'scheduler.queue_polcy' (did you mean "
                                  "scheduler.queue_policy?)")
    conf = tmp_path / "corral.toml"
    conf.write_text("[scheduler]\ncpu_ratio = 2.0\nquantum = 3.0\nqueue_policy = \"sjf\"\n")
    with running_daemon(image_path, CORRAL_CONFIG=str(conf),
                        CORRAL_QUEUE_POLICY="priority") as d:
        shown = {s["key"]: s for s in d.client.config()["settings"]}
        assert (shown["scheduler.cpu_ratio"]["value"], shown["scheduler.cpu_ratio"]["source"]) \
            == (2.0, f"{conf}:2")
        assert shown["scheduler.queue_policy"]["source"] == "environment CORRAL_QUEUE_POLICY"
        assert d.client.host_info()["scheduler"]["policy"] == "priority"
        text = ok(d, "config", "show")
        assert f"configuration file: {conf}" in text and "scheduler.quantum" in text
    with running_daemon(image_path, CORRAL_CONFIG=str(conf)) as d:
        d.stop()
        log = tmp_path / "json.log"
        with log.open("wb") as err:
            d.proc = subprocess.Popen([CORRAL, "serve", "--set", "scheduler.quantum=4",
                                       "--log-format", "json"], env=d.env,
                                      stdout=subprocess.DEVNULL, stderr=err)
        until(lambda: d.socket.exists(), 20)
        assert until(lambda: bool(d.client.config()), 20)
        shown = {s["key"]: s for s in d.client.config()["settings"]}
        assert shown["scheduler.quantum"]["value"] == 4.0
        assert shown["scheduler.quantum"]["source"] == "--set scheduler.quantum"
        assert shown["log.format"]["value"] == "json"
        d.stop()
        first = json.loads(log.read_text().splitlines()[0])
        assert first["level"] == "info" and "corral serve starting" in first["message"]
