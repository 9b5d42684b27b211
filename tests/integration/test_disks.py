"""Named disks on a real guest: hot-plug seen inside, writes kept across detach, IO limits
that measurably throttle, statistics, resize, and the refusals."""

from __future__ import annotations

import json
import time

import pytest

from corral.errors import InvalidState

from .conftest import Daemon


def sh(d: Daemon, vm: str, script: str, timeout: float = 60) -> str:
    res = d.client.exec(vm, ["sh", "-c", script], timeout=timeout)
    assert res["exitcode"] == 0, res
    return str(res["stdout"].decode())


def wait_for(d: Daemon, vm: str, script: str, want: str, within: float = 15) -> str:
    deadline = time.monotonic() + within
    while (out := sh(d, vm, script).strip()) != want and time.monotonic() < deadline:
        time.sleep(0.2)
    return out


def test_hotplug_detach_reattach_resize(daemon: Daemon) -> None:
    d, c = daemon, daemon.client
    res = d.cli("disk", "create", "d1", "--size", "64M", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["size_bytes"] == 64 << 20
    c.create("hp", start=True, wait=True)
    c.create("other", start=True, wait=True)
    assert sh(d, "hp", "ls /dev/vd* 2>/dev/null || true").strip() == ""

    assert d.cli("attach-disk", "hp", "d1").returncode == 0
    assert wait_for(d, "hp", "ls /dev/vd* 2>/dev/null || true", "/dev/vda") == "/dev/vda"
    sh(d, "hp", "printf KEEP-1 | dd of=/dev/vda bs=512 seek=7 conv=notrunc,fsync 2>/dev/null")
    assert "d1" in d.cli("disk", "list").stdout.split("hp")[0] or "hp" in d.cli(
        "disk", "list").stdout

    # one VM at a time; no removal while attached
    with pytest.raises(InvalidState):
        c.attach_disk("other", "d1")
    res = d.cli("disk", "rm", "d1")
    assert res.returncode == 5 and "attached to 'hp'" in res.stderr

    # grows while attached; the guest sees the new size
    assert d.cli("disk", "resize", "d1", "128M").returncode == 0
    assert wait_for(d, "hp", "cat /sys/block/vda/size", str((128 << 20) // 512)) == str(
        (128 << 20) // 512)

    c.pause("hp")  # a paused guest cannot let go of it: refused at once, not after 30 s
    res = d.cli("detach-disk", "hp", "d1")
    assert res.returncode == 5 and "resume it first" in res.stderr, res.stderr
    c.resume("hp")
    assert d.cli("detach-disk", "hp", "d1").returncode == 0
    assert wait_for(d, "hp", "ls /dev/vd* 2>/dev/null || true", "") == ""
    c.attach_disk("other", "d1")  # free again: another VM may take it
    assert wait_for(d, "other", "ls /dev/vd* 2>/dev/null || true", "/dev/vda") == "/dev/vda"
    out = sh(d, "other", "dd if=/dev/vda bs=512 skip=7 count=1 2>/dev/null | head -c 6")
    assert out == "KEEP-1"  # the write survived detach and re-attach
    c.destroy("other")  # a named disk outlives its VM: it is only detached
    assert json.loads(d.cli("disk", "list", "--json").stdout)[0]["vm"] is None
    assert d.cli("disk", "rm", "d1").returncode == 0
    assert d.cli("disk", "list", "--json").stdout.strip() == "[]"
    c.destroy("hp")


def test_io_limits_throttle_and_stats(daemon: Daemon) -> None:
    d, c = daemon, daemon.client
    c.disk_create("fast", size="32M")
    c.disk_create("slow", size="32M")
    c.create("io", start=True, wait=True)
    c.attach_disk("io", "fast")
    res = d.cli("attach-disk", "io", "slow", "--bps", "1M")
    assert res.returncode == 0, res.stderr
    assert wait_for(d, "io", "ls /dev/vd* | wc -l", "2") == "2"

    def read_seconds(dev: str) -> float:
        out = c.exec("io", ["dd", f"if=/dev/{dev}", "of=/dev/null", "bs=64k", "count=40",
                            "iflag=direct"], timeout=60)
        assert out["exitcode"] == 0, out
        return float(out["seconds"])

    fast, slow = read_seconds("vda"), read_seconds("vdb")  # 2.5 MiB each
    assert slow > 1.8, slow  # 2.5 MiB at 1 MiB/s
    assert slow > 4 * fast, (fast, slow)
    disks = {x["name"]: x for x in c.get("io")["disks"]}
    assert disks["slow"]["stats"]["rd_bytes"] >= 40 * 65536
    assert disks["slow"]["bps"] == 1 << 20
    c.destroy("io")
    c.disk_delete("fast")
    c.disk_delete("slow")
