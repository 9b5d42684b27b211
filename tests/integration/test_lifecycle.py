"""The whole lifecycle on one real guest, through the CLI and the Python client:
create → start --wait → pause → resume → reboot → shutdown → start → stop --force → destroy."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from corral.config import Paths
from corral.engine.accel import detect

from .conftest import Daemon, qemu_pids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def show(d: Daemon, name: str) -> dict[str, object]:
    out = d.cli("show", name, "--json", check=True).stdout
    data: dict[str, object] = json.loads(out)
    return data


def test_full_lifecycle(daemon: Daemon) -> None:
    d = daemon
    res = d.cli("create", "life", "--memory", "256M", "--cpus", "1", "--disk", "64M", "--json")
    assert res.returncode == 0, res.stderr
    vm = json.loads(res.stdout)
    assert vm["state"] == "defined" and vm["pid"] is None
    disk = Path(vm["disks"][0]["path"])
    assert disk.is_file()

    # start --wait: ready means the guest agent answered
    res = d.cli("start", "life", "--wait", "--json")
    assert res.returncode == 0, res.stderr
    vm = show(d, "life")
    assert vm["state"] == "running" and vm["ready"] is True
    assert vm["qemu_status"] == "running"
    assert vm["accel"] == detect().name
    pid = int(str(vm["pid"]))
    assert _alive(pid)
    assert f"-accel\0{detect().name}".encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    boot = float(str(vm["boot_seconds"]))
    assert 0 < boot < 60
    assert d.wait_serial("life", "GUEST-READY").count("GUEST-READY") == 1

    # pause / resume: QEMU's own run state follows
    assert d.cli("pause", "life").returncode == 0
    vm = show(d, "life")
    assert vm["state"] == "paused" and vm["qemu_status"] == "paused"
    assert d.cli("resume", "life").returncode == 0
    vm = show(d, "life")
    assert vm["state"] == "running" and vm["qemu_status"] == "running"

    # reboot: the same QEMU, the guest boots again and becomes ready again
    res = d.cli("reboot", "life", "--wait")
    assert res.returncode == 0, res.stderr
    vm = show(d, "life")
    assert vm["pid"] == pid and vm["ready"] is True
    assert d.wait_serial("life", "GUEST-READY", 2).count("GUEST-READY") == 2

    # shutdown: the guest powers off and QEMU exits
    t0 = time.monotonic()
    res = d.cli("shutdown", "life", "--timeout", "30")
    assert res.returncode == 0, res.stderr
    assert time.monotonic() - t0 < 25
    vm = show(d, "life")
    assert vm["state"] == "stopped" and vm["pid"] is None
    assert vm["exit_reason"] == "shut down"
    assert not _alive(pid)
    run = Paths(d.home).run_dir("life")
    assert not run.exists()

    # start again, then pull the plug
    assert d.cli("start", "life", "--wait").returncode == 0
    pid2 = int(str(show(d, "life")["pid"]))
    assert pid2 != pid and _alive(pid2)
    t0 = time.monotonic()
    assert d.cli("stop", "life", "--force").returncode == 0
    assert time.monotonic() - t0 < 5
    vm = show(d, "life")
    assert vm["state"] == "stopped" and vm["exit_reason"] == "forced off"
    assert not _alive(pid2)

    # destroy leaves nothing: no process, socket, pidfile or disk
    assert d.cli("start", "life").returncode == 0
    pid3 = int(str(show(d, "life")["pid"]))
    res = d.cli("destroy", "life")
    assert res.returncode == 0, res.stderr
    assert not _alive(pid3)
    assert not disk.exists()
    assert not (d.home / "vms" / "life").exists()
    assert not run.exists()
    assert qemu_pids(str(d.home)) == []
    assert d.cli("show", "life").returncode == 3


def test_python_client_and_list(daemon: Daemon) -> None:
    c = daemon.client
    vm = c.create("pyc", memory="128M", start=True, wait=True)
    assert vm["state"] == "running" and vm["ready"]
    assert [v["name"] for v in c.list()] == ["pyc"]
    for _ in range(3):
        assert c.pause("pyc")["state"] == "paused"
        assert c.resume("pyc")["state"] == "running"
    assert c.get("pyc")["qemu_status"] == "running"
    out = daemon.cli("list").stdout
    assert out.splitlines()[0].split()[:3] == ["NAME", "STATE", "READY"]
    assert "pyc" in out and "running" in out
    daemon.wait_serial("pyc", "GUEST-READY")
    assert "GUEST-READY" in daemon.cli("logs", "pyc").stdout
    host = json.loads(daemon.cli("host", "info", "--json").stdout)
    assert host["accel"] == detect().name and host["vms_running"] == 1
    assert host["cpus"] == os.cpu_count()
    c.destroy("pyc")
    assert c.list() == []


def test_shutdown_of_paused_vm_uses_acpi_power_button(daemon: Daemon) -> None:
    c = daemon.client
    c.create("acpi", start=True, wait=True)
    c.pause("acpi")
    t0 = time.monotonic()
    vm = c.shutdown("acpi", timeout=20)
    assert vm["state"] == "stopped" and vm["exit_reason"] == "shut down"
    assert time.monotonic() - t0 < 15  # the guest acted on the button; not forced after 20 s
    assert "corral-guest: poweroff" in daemon.serial("acpi")
    c.destroy("acpi")
