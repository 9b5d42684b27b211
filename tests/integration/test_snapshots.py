"""Snapshots on a real guest: memory snapshots put the guest back at that moment; disk
snapshots roll its disks back; the tree keeps its shape."""

from __future__ import annotations

import json
import time

from .conftest import COUNTER, Daemon


def sh(d: Daemon, vm: str, script: str) -> str:
    res = d.client.exec(vm, ["sh", "-c", script], timeout=30)
    assert res["exitcode"] == 0, res
    return str(res["stdout"].decode())


def write_mark(d: Daemon, vm: str, mark: str) -> None:
    sh(d, vm, f"printf {mark} | dd of=/dev/vda bs=512 seek=100 conv=notrunc,fsync 2>/dev/null")


def read_mark(d: Daemon, vm: str) -> str:
    return sh(d, vm, "dd if=/dev/vda bs=512 skip=100 count=1 2>/dev/null | head -c 6")


def test_snapshot_tree_memory_and_disk(daemon: Daemon) -> None:
    d, c = daemon, daemon.client
    c.create("snap", disks=[{"size": "64M"}], start=True, wait=True)
    sh(d, "snap", COUNTER)
    write_mark(d, "snap", "MARK-A")
    time.sleep(0.3)
    res = d.cli("snapshot", "create", "snap", "s1", "--memory", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["memory"] is True
    at_snapshot = int(sh(d, "snap", "cat /tmp/counter"))
    sh(d, "snap", "echo later > /tmp/later")
    write_mark(d, "snap", "MARK-B")
    time.sleep(1.0)  # the counter moves on by about 20

    # memory revert: the later file is gone, the disk is back, the counter continues from s1
    res = d.cli("snapshot", "revert", "snap", "s1")
    assert res.returncode == 0, res.stderr
    c.wait_ready("snap", timeout=30)
    assert sh(d, "snap", "test -e /tmp/later && echo yes || echo no").strip() == "no"
    assert read_mark(d, "snap") == "MARK-A"
    resumed = int(sh(d, "snap", "cat /tmp/counter"))
    assert at_snapshot - 2 <= resumed < at_snapshot + 12, (at_snapshot, resumed)
    assert c.get("snap")["state"] == "running"

    # a disk-only snapshot of the stopped VM, then a revert of the running VM to it
    c.stop("snap")
    assert d.cli("snapshot", "create", "snap", "s2").returncode == 0
    c.start("snap", wait=True)
    write_mark(d, "snap", "MARK-C")
    assert read_mark(d, "snap") == "MARK-C"
    vm = c.snapshot_revert("snap", "s2")
    assert vm["state"] == "running"
    c.wait_ready("snap", timeout=60)
    assert read_mark(d, "snap") == "MARK-A"  # the disk as it was when s2 was taken

    tree = c.snapshot_list("snap")
    assert [(s["name"], s["parent"], s["depth"]) for s in tree] == [("s1", None, 0),
                                                                   ("s2", "s1", 1)]
    assert [s["name"] for s in tree if s["current"]] == ["s2"]
    listing = d.cli("snapshot", "list", "snap").stdout
    assert "s1  (memory+disk, running)" in listing and "  s2  (disk, stopped)" in listing

    # refusals: duplicate name, unknown snapshot, --memory on a stopped VM
    assert d.cli("snapshot", "create", "snap", "s1").returncode == 4
    assert d.cli("snapshot", "revert", "snap", "nope").returncode == 3
    c.stop("snap")
    res = d.cli("snapshot", "create", "snap", "s3", "--memory")
    assert res.returncode == 2 and "no running state" in res.stderr

    # removing a parent re-hangs its child
    assert d.cli("snapshot", "rm", "snap", "s1").returncode == 0
    assert [(s["name"], s["parent"]) for s in c.snapshot_list("snap")] == [("s2", None)]
    c.destroy("snap")


def test_memory_revert_of_a_stopped_vm(daemon: Daemon) -> None:
    d, c = daemon, daemon.client
    c.create("cold", start=True, wait=True)
    sh(d, "cold", COUNTER)
    time.sleep(0.3)
    c.snapshot_create("cold", "m1", memory=True)
    at_snapshot = int(sh(d, "cold", "cat /tmp/counter"))
    sh(d, "cold", "touch /tmp/after")
    c.stop("cold")
    vm = c.snapshot_revert("cold", "m1")
    assert vm["state"] == "running"
    c.wait_ready("cold", timeout=30)
    assert sh(d, "cold", "test -e /tmp/after && echo yes || echo no").strip() == "no"
    resumed = int(sh(d, "cold", "cat /tmp/counter"))
    assert at_snapshot - 2 <= resumed < at_snapshot + 12, (at_snapshot, resumed)
    c.destroy("cold")
