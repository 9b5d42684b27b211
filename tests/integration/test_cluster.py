"""Several hosts, one cluster on PostgreSQL: three hosts as network namespaces on one
machine, each its own ``corral serve`` (own ``CORRAL_HOME`` and QEMUs), and one PostgreSQL
started here. Guests booted: three tiny ones in all.

Join (with a token; a duplicate name and a missing token refused), placement on the host
asked for and run there (the QEMU is inside that host's namespace), the whole cluster in
``corral list`` from any daemon, anti-affinity spreading a group, cordon respected, the
leader killed and another admitting the queue, a dead host down with its VMs ``unknown``,
PostgreSQL stopped and started.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.cluster_fixture import DOWN_AFTER, SETTINGS, HostDaemon, three_hosts
from tests.integration.cluster_hosts import (
    Postgres,
    namespace_inode,
    netns_inode,
    wait_for,
)
from tests.integration.conftest import CORRAL, qemu_pids

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(image_path: str) -> Iterator[dict[str, HostDaemon]]:
    with three_hosts(image_path) as hosts:
        yield hosts


def _vm_host(d: HostDaemon, name: str) -> str | None:
    return {v["name"]: v.get("host") for v in d.client.list()}.get(name)


def test_hosts_join_and_list(cluster: dict[str, HostDaemon]) -> None:
    hosts = cluster["h2"].json("host", "list")
    assert [h["name"] for h in hosts] == ["h1", "h2", "h3"]
    assert {h["state"] for h in hosts} == {"up"}
    assert sum(h["leader"] for h in hosts) == 1
    assert hosts[0]["address"] == f"{cluster['h1'].address}:7443" and hosts[0]["cpus"] == 2
    table = cluster["h3"].cli("host", "list", check=True).stdout
    assert "LEADER" in table and "h3" in table


def test_joining_is_refused_for_a_live_name_and_without_a_token(
        cluster: dict[str, HostDaemon], image_path: str) -> None:
    url = cluster["h1"].env["CORRAL_CLUSTER"]
    for name, extra, expect in (("h2", {"CORRAL_JOIN_TOKEN": "x"}, "already served"),
                                ("h9", {}, "join token")):
        home = Path(tempfile.mkdtemp(prefix="crl-bad-", dir="/tmp"))
        try:
            env = {**os.environ, "CORRAL_HOME": str(home), "CORRAL_CLUSTER": url,
                   "CORRAL_HOST_NAME": name, "CORRAL_IMAGE_PATH": image_path, **SETTINGS,
                   **extra}
            res = subprocess.run([CORRAL, "serve"], env=env, capture_output=True, text=True,
                                 timeout=60)
            assert res.returncode != 0
            assert expect in res.stderr, res.stderr[-2000:]
        finally:
            shutil.rmtree(home, ignore_errors=True)
    assert [h["state"] for h in cluster["h1"].json("host", "list")] == ["up"] * 3


def test_a_vm_placed_on_the_host_asked_runs_there(cluster: dict[str, HostDaemon]) -> None:
    h1, h3 = cluster["h1"], cluster["h3"]
    vm = h1.json("run", "web", "--host", "h3", "--memory", "256M")
    assert vm["host"] == "h3" and vm["state"] == "running" and vm["ready"]
    pid = h3.client.get("web")["pid"]
    assert pid and netns_inode(pid) == namespace_inode(cluster["h3"].ns)
    assert str(h3.home) in Path(f"/proc/{pid}/cmdline").read_text()
    table = cluster["h2"].cli("list", check=True).stdout
    assert "HOST" in table and any(line.split()[:3] == ["web", "h3", "running"]
                                   for line in table.splitlines())
    assert [v["name"] for v in cluster["h2"].json("list", "--host", "h1")] == []
    explained = cluster["h2"].json("show", "web", "--explain")
    assert explained["host"] == "h3" and explained["hosts"]["h3"] == "chosen"
    assert "not the host asked for" in explained["hosts"]["h1"]
    shown = cluster["h2"].json("show", "web")  # forwarded to h3: its own live answer
    assert shown["host"] == "h3" and shown["state"] == "running"
    assert shown["qemu_status"] == "running" and shown["pid"] == pid


def test_any_daemon_acts_on_a_vm_of_another_host(cluster: dict[str, HostDaemon]) -> None:
    h1, h3 = cluster["h1"], cluster["h3"]
    assert h1.json("pause", "web")["state"] == "paused"
    assert h3.client.get("web")["qemu_status"] == "paused"  # really paused, on h3
    assert h1.json("resume", "web")["state"] == "running"
    res = h1.cli("exec", "web", "--", "cat", "/proc/cpuinfo")
    assert res.returncode == 0 and "processor" in res.stdout
    wrong = h1.cli("start", "web")  # an error of h3's daemon, answered as h3 answered it
    assert wrong.returncode == 5 and "web" in wrong.stderr
    dup = h1.cli("create", "web")
    assert dup.returncode == 4 and "exists on host h3" in dup.stderr


def test_a_saved_vm_moves_to_another_host_and_resumes_there(
        cluster: dict[str, HostDaemon]) -> None:
    h1, h2, h3 = cluster["h1"], cluster["h2"], cluster["h3"]
    h1.json("run", "mv", "--host", "h1", "--memory", "128M")
    h2.cli("exec", "mv", "--", "sh", "-c", "echo kept > /tmp/mark", check=True)
    assert h2.json("save", "mv")["state"] == "saved"  # forwarded to h1
    vm = h2.json("move", "mv", "--to", "h3")
    assert vm["host"] == "h3" and vm["state"] == "running"
    assert h3.client.get("mv")["pid"] in qemu_pids(str(h3.home))
    assert h1.cli("exec", "mv", "--", "cat", "/tmp/mark", check=True).stdout == "kept\n"
    assert not (h1.home / "vms" / "mv").exists()
    assert "mv" not in {v["name"] for v in h1.client.list(host="h1")}
    running = h1.cli("move", "mv", "--to", "h1")
    assert running.returncode == 5 and "running" in running.stderr
    h1.client.rm("mv")


def test_anti_affinity_and_cordon(cluster: dict[str, HostDaemon]) -> None:
    h2 = cluster["h2"]
    for name in ("a1", "a2"):
        h2.json("create", name, "--group", "g", "--anti-affinity", "--memory", "128M")
    placed = {_vm_host(h2, "a1"), _vm_host(h2, "a2")}
    assert len(placed) == 2 and None not in placed
    third = h2.cli("create", "a3", "--group", "g", "--anti-affinity", "--memory", "128M",
                   "--host", next(iter(placed)))
    assert third.returncode == 9 and "anti-affinity" in third.stderr
    for name in ("a1", "a2"):  # else the drain below moves one of them, maybe to h3
        h2.client.rm(name)  # forwarded to its host
    h2.cli("host", "cordon", "h1", check=True)
    h2.cli("host", "drain", "h2", check=True)
    try:
        states = {h["name"]: h["state"] for h in h2.json("host", "list")}
        assert states == {"h1": "cordoned", "h2": "draining", "h3": "up"}
        # (h3 may hold 'web' already: room for one more vCPU of its two)
        assert h2.json("create", "c1", "--memory", "128M")["host"] == "h3"
        refused = h2.cli("create", "c3", "--host", "h1")
        assert refused.returncode == 9 and "host is cordoned" in refused.stderr
    finally:
        h2.cli("host", "uncordon", "h1", check=True)
        h2.cli("host", "uncordon", "h2", check=True)
    h2.client.rm("c1")


def _leader(d: HostDaemon) -> str | None:
    return next((h["name"] for h in d.json("host", "list") if h["leader"]), None)


def test_leader_killed_another_admits_the_queue_and_the_dead_host_is_down(
        cluster: dict[str, HostDaemon]) -> None:
    wait_for(lambda: _leader(cluster["h1"]) is not None, 10, "a leader")
    leader = str(_leader(cluster["h1"]))
    victim = cluster[leader]
    others = [d for name, d in cluster.items() if name != leader]
    asker = others[0]
    # fill every other host so the next start must wait for room in the cluster queue
    fill = []
    for i, d in enumerate(others):
        fill.append(f"f{i}")
        vm = asker.json("run", f"f{i}", "--memory", "700M", "--host", d.name, "--no-wait")
        assert vm["host"] == d.name
    assert victim.proc is not None
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(10)
    victim.proc = None
    took = wait_for(lambda: _leader(asker) not in (leader, None), 10, "a new leader")
    assert took < 10
    wait_for(lambda: {h["name"]: h["state"] for h in asker.json("host", "list")}[leader]
             == "down", DOWN_AFTER + 5, "the killed host is down")
    queued = asker.json("run", "q1", "--memory", "700M", "--no-wait")
    assert queued["state"] == "queued" and queued["host"] is None
    asker.json("run", "q2", "--memory", "700M", "--no-wait")
    asker.cli("rm", "q2", check=True)  # a request still waiting is cancelled
    assert "q2" not in {v["name"] for v in asker.client.list()}
    owner_of_f0 = others[0]
    owner_of_f0.client.rm("f0")
    fill.remove("f0")
    wait_for(lambda: _vm_host(asker, "q1") is not None, 20, "the new leader admits q1")
    host = _vm_host(asker, "q1")
    assert host == owner_of_f0.name
    wait_for(lambda: cluster[host].client.get("q1")["state"] == "running", 60, "q1 runs")
    victim.start()  # it rejoins under its name and re-adopts what it had
    wait_for(lambda: {h["name"]: h["state"] for h in asker.json("host", "list")}[leader]
             == "up", 10, "the restarted host is up")
    for name in ["q1", *fill]:
        asker.client.rm(name)


def test_a_down_host_shows_its_vms_unknown(cluster: dict[str, HostDaemon]) -> None:
    h1, h3 = cluster["h1"], cluster["h3"]
    assert _vm_host(h1, "web") == "h3"
    h3.stop(signal.SIGKILL)
    try:
        wait_for(lambda: {v["name"]: v["state"] for v in h1.client.list()}.get("web")
                 == "unknown", DOWN_AFTER + 5, "web unknown")
        shown = h1.json("show", "web")
        assert shown["state"] == "unknown" and shown["last_state"] == "running"
        t0 = time.monotonic()
        res = h1.cli("pause", "web")
        assert res.returncode == 19 and "h3" in res.stderr and "down" in res.stderr
        assert time.monotonic() - t0 < 5
    finally:
        h3.start()
    assert h3.client.get("web")["state"] == "running"  # re-adopted: it never stopped


def test_postgres_stopped_and_started(cluster: dict[str, HostDaemon]) -> None:
    h1, h3 = cluster["h1"], cluster["h3"]
    pg: Postgres = h1.pg  # type: ignore[attr-defined]
    pid = h3.client.get("web")["pid"]
    pg.stop()
    try:
        res = h1.cli("create", "nope", "--memory", "64M")
        assert res.returncode == 18 and "cluster store" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
        # h3 learns it in its next round (every 0.2 s): until then a change is accepted, so
        # it is probed with one that changes nothing (the VM runs already), then a real one
        wait_for(lambda: h3.cli("resume", "web").returncode == 18, 5, "changes refused")
        assert h3.cli("pause", "web").returncode == 18
        assert h3.client.get("web")["state"] == "running"  # reads are answered
        os.kill(pid, 0)  # a running VM keeps running
    finally:
        pg.start()
    wait_for(lambda: all(h["state"] == "up" and h["silent_seconds"] < 2
                         for h in h1.json("host", "list")), 20, "heartbeats again")
    wait_for(lambda: sum(h["leader"] for h in h1.json("host", "list")) == 1, 10, "a leader")
    # a daemon takes changes again once a whole round of its own went through (its
    # heartbeat is the first step of that round)
    wait_for(lambda: h1.cli("pause", "web").returncode != 18, 10, "changes taken again")
    assert h1.client.get("web")["state"] == "paused"
    h1.client.rm("web")
    assert "web" not in {v["name"] for v in h1.client.list()}


def test_an_ha_vm_of_a_lost_host_runs_on_another_exactly_once(
        cluster: dict[str, HostDaemon]) -> None:
    h1, h2 = cluster["h1"], cluster["h2"]
    vm = h1.json("run", "ha1", "--ha", "--host", "h2", "--image", "tiny-disk", "--memory", "128M")
    assert vm["host"] == "h2" and vm["state"] == "running"
    files = Path(h2.client.get("ha1")["disks"][0]["path"]).parent
    assert files.parent.name == "vms" and str(h2.home) not in str(files)  # shared storage
    assert len(qemu_pids(str(files))) == 1
    assert h2.proc is not None
    t0 = time.monotonic()
    h2.proc.send_signal(signal.SIGKILL)  # the host is lost: its daemon and its QEMUs
    for pid in qemu_pids(str(h2.home)):
        os.kill(pid, signal.SIGKILL)
    h2.proc.wait(10)
    h2.proc = None

    def running_elsewhere() -> bool:
        v = {x["name"]: x for x in h1.client.list()}.get("ha1")
        return v is not None and v.get("host") not in (None, "h2") and v["state"] == "running"

    took = wait_for(running_elsewhere, 30, "ha1 restarted on another host")
    print(f"\nhost lost -> its --ha VM running elsewhere: {time.monotonic() - t0:.1f} s "
          f"(heartbeat {SETTINGS['CORRAL_HEARTBEAT']} s, down after {DOWN_AFTER} s)")
    assert took < 20
    assert len(qemu_pids(str(files))) == 1  # exactly once
    h2.start()  # the lost host returns: it must not run ha1 again
    assert "ha1" not in {v["name"] for v in h2.client.list(host="h2")}
    assert len(qemu_pids(str(files))) == 1
    assert [v["name"] for v in h2.client.list()].count("ha1") == 1
    assert h2.json("show", "ha1")["state"] == "running"  # forwarded to its new host
    h2.client.rm("ha1")
    assert not files.exists()
