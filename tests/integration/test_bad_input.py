"""Every bad request gets one clear line, the right exit code or status, and changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.errors import InvalidState, NotFound

from .conftest import Daemon, qemu_pids


def one_line_error(res: object) -> str:
    err = str(res.stderr)
    assert err.startswith("corral: error: "), err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(("args", "field"), [
    (["--memory", "12X"], "memory"),
    (["--cpus", "0"], "cpus"),
    (["--memory", "100T"], "memory"),
    (["--kernel", "/no/such/vmlinuz"], "kernel"),
    (["--image", "nope"], "image"),
    (["--disk", "path=/no/such.img"], "disks.0.path"),
])
def test_invalid_specs(daemon: Daemon, args: list[str], field: str) -> None:
    res = daemon.cli("create", "badvm", *args)
    assert res.returncode == 2
    assert one_line_error(res).startswith(f"corral: error: {field}: ")
    assert daemon.client.list() == []


def test_bad_name(daemon: Daemon) -> None:
    res = daemon.cli("create", "Bad_Name")
    assert res.returncode == 2 and "name: " in one_line_error(res)


def test_unknown_vm(daemon: Daemon) -> None:
    for op in ("start", "pause", "show", "destroy", "logs"):
        res = daemon.cli(op, "ghost")
        assert res.returncode == 3, op
        assert "no VM named 'ghost'" in one_line_error(res)
    with pytest.raises(NotFound):
        daemon.client.get("ghost")


def test_wrong_states(daemon: Daemon, make_vm: object) -> None:
    d = daemon
    assert d.cli("create", "st").returncode == 0
    res = d.cli("pause", "st")
    assert res.returncode == 5
    assert "cannot pause VM 'st': it is defined (needs running)" in one_line_error(res)
    assert d.cli("start", "st", "--wait").returncode == 0
    pid = d.client.get("st")["pid"]
    for op, msg in [("resume", "it is running (needs paused)"),
                    ("start", "it is running (needs defined, stopped, saved, crashed)")]:
        res = d.cli(op, "st")
        assert res.returncode == 5 and msg in one_line_error(res), res.stderr
    vm = d.client.get("st")
    assert vm["state"] == "running" and vm["pid"] == pid  # nothing changed
    d.cli("stop", "st", "--force", check=True)
    with pytest.raises(InvalidState) as info:
        d.client.pause("st")
    assert info.value.status == 409 and "it is stopped" in info.value.message
    d.client.destroy("st")


def test_failed_start_rolls_back(daemon: Daemon, tmp_path: Path) -> None:
    junk = tmp_path / "junk-kernel"
    junk.write_bytes(b"this is not a kernel" * 100)
    d = daemon
    assert d.cli("create", "junk", "--kernel", str(junk)).returncode == 0
    res = d.cli("start", "junk")
    assert res.returncode == 1
    err = one_line_error(res)
    assert "QEMU would not start" in err
    vm = d.client.get("junk")
    assert vm["state"] == "defined" and vm["pid"] is None
    assert "start failed" in str(vm["exit_reason"])
    assert qemu_pids(str(d.home)) == []
    from corral.config import Paths

    assert not Paths(d.home).run_dir("junk").exists()
    d.client.destroy("junk")
    # run = create + start: a failed run leaves no VM at all
    res = d.cli("run", "junk2", "--kernel", str(junk))
    assert res.returncode == 1
    assert json.loads(d.cli("list", "--json").stdout) == []
    assert not (d.home / "vms" / "junk2").exists()
