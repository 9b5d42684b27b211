"""Warm starts: new VMs begin as copies of a memory snapshot, fast, each with its identity."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from .conftest import Daemon, assert_clock_is_now, remove_everything


@pytest.fixture(autouse=True)
def fresh(daemon: Daemon) -> Iterator[None]:
    """Each test starts on an empty daemon: a failed one leaves no VMs that take the
    capacity the next one needs (its starts would wait in the queue)."""
    yield
    remove_everything(daemon.client)


def sh(d: Daemon, vm: str, script: str) -> str:
    res = d.client.exec(vm, ["sh", "-c", script], timeout=30)
    assert res["exitcode"] == 0, res
    return str(res["stdout"].decode()).strip()


def test_warm_start_from_snapshot(daemon: Daemon) -> None:
    d, c = daemon, daemon.client
    t0 = time.monotonic()
    c.create("gold", disks=[{"size": "32M"}], start=True, wait=True)
    cold = time.monotonic() - t0
    sh(d, "gold", "echo golden > /tmp/state; printf GOLD-1 | "
                  "dd of=/dev/vda bs=512 seek=3 conv=notrunc,fsync 2>/dev/null")
    c.snapshot_create("gold", "base", memory=True)
    sh(d, "gold", "echo changed-after > /tmp/state")

    first = d.cli("run", "w1", "--from-snapshot", "gold:base", "--json")  # makes the template
    assert first.returncode == 0, first.stderr
    times = []
    for name in ("w2", "w3", "w4", "w5"):
        t0 = time.monotonic()
        vm = c.create(name, from_snapshot="gold:base", start=True, wait=True)
        times.append(time.monotonic() - t0)
        assert vm["state"] == "running" and vm["ready"]
    print(f"cold boot {cold:.3f} s, warm starts to an answering agent: "
          f"{[round(t, 3) for t in times]}")
    # against a cold boot in the same run (the same load on both): about 5x apart here, so
    # half is a margin a busy host keeps; bench/state.py measures precisely
    assert min(times) < cold / 2, (cold, times)

    macs = set()
    for name in ("w1", "w2", "w3", "w4", "w5"):
        assert sh(d, name, "cat /tmp/state") == "golden"  # the snapshot's memory
        assert sh(d, name, "dd if=/dev/vda bs=512 skip=3 count=1 2>/dev/null | head -c 6") \
            == "GOLD-1"  # the snapshot's disk
        vm = c.get(name)
        mac = vm["nics"][0]["mac"]
        macs.add(mac)
        deadline = time.monotonic() + 5
        while sh(d, name, "hostname") != name and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sh(d, name, "hostname") == name
        assert sh(d, name, "cat /sys/class/net/eth0/address") == mac
        assert_clock_is_now(d, name)
    assert len(macs) == 5 and c.get("gold")["nics"][0]["mac"] not in macs

    # clones are independent: a write in one is not seen by another or by the template
    sh(d, "w1", "printf MINE-1 | dd of=/dev/vda bs=512 seek=3 conv=notrunc,fsync 2>/dev/null")
    assert sh(d, "w2", "dd if=/dev/vda bs=512 skip=3 count=1 2>/dev/null | head -c 6") == \
        "GOLD-1"
    assert sh(d, "gold", "cat /tmp/state") == "changed-after"

    assert d.cli("run", "bad", "--from-snapshot", "gold:nope").returncode == 3
    assert d.cli("run", "bad", "--from-snapshot", "gold").returncode == 2
    assert "bad" not in [v["name"] for v in c.list()]
    for name in ("w1", "w2", "w3", "w4", "w5"):
        c.destroy(name)
    c.snapshot_delete("gold", "base")
    assert not (d.home / "vms" / "gold" / "templates" / "base").exists()
    c.destroy("gold")


def test_clones_of_a_stopped_vm_and_of_a_snapshot(daemon: Daemon) -> None:
    d, c = daemon, daemon.client
    c.create("orig", disks=[{"size": "32M"}], start=True, wait=True)
    sh(d, "orig", "printf ORIG-1 | dd of=/dev/vda bs=512 seek=5 conv=notrunc,fsync 2>/dev/null")
    c.stop("orig")
    res = d.cli("clone", "orig", "full1", "--json")
    assert res.returncode == 0, res.stderr
    c.snapshot_create("orig", "s")
    c.clone("orig", "lnk1", snapshot="s")
    c.start("orig", wait=True)
    sh(d, "orig", "printf ORIG-2 | dd of=/dev/vda bs=512 seek=5 conv=notrunc,fsync 2>/dev/null")
    for name in ("full1", "lnk1"):
        vm = c.start(name, wait=True)
        assert vm["nics"][0]["mac"] != c.get("orig")["nics"][0]["mac"]
        assert sh(d, name, "hostname") == name  # a cold boot under its own name
        assert sh(d, name, "dd if=/dev/vda bs=512 skip=5 count=1 2>/dev/null | head -c 6") \
            == "ORIG-1"
    backing = subprocess.run(["qemu-img", "info", "-U", "--output=json",
                              c.get("lnk1")["disks"][0]["path"]], capture_output=True,
                             text=True, check=True).stdout
    assert "backing-filename" in backing  # linked: an overlay on the snapshot's frozen disk
    assert d.cli("clone", "orig", "nope").returncode == 5  # current disks of a running VM
    for name in ("full1", "lnk1", "orig"):
        c.destroy(name)
