"""VMs outlive the daemon and are re-adopted; QEMU deaths are seen as crashes."""

from __future__ import annotations

import os
import shutil
import signal
import time

from corral.client import Client

from .conftest import Daemon


def wait_state(c: Client, name: str, state: str, within: float) -> dict[str, object]:
    deadline = time.monotonic() + within
    while True:
        vm: dict[str, object] = c.get(name)
        if vm["state"] == state or time.monotonic() > deadline:
            return vm
        time.sleep(0.02)


def test_daemon_restart_readopts_running_vm(daemon: Daemon) -> None:
    c = daemon.client
    vm = c.create("keep", start=True, wait=True)
    pid = vm["pid"]
    daemon.stop()
    os.kill(pid, 0)  # still alive without the daemon
    daemon.start()
    vm = daemon.client.get("keep")
    assert vm["state"] == "running" and vm["pid"] == pid and vm["ready"]
    assert vm["qemu_status"] == "running"
    c = daemon.client
    assert c.pause("keep")["state"] == "paused"
    daemon.stop()
    daemon.start()
    c = daemon.client
    vm = c.get("keep")
    assert vm["state"] == "paused" and vm["pid"] == pid
    assert c.resume("keep")["state"] == "running"


def test_kill_9_is_seen_as_crashed_within_a_second(daemon: Daemon) -> None:
    c = daemon.client
    if c.list() == [] or c.get("keep")["state"] != "running":
        c.create("keep", start=True, wait=True)
    pid = c.get("keep")["pid"]
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    vm = wait_state(c, "keep", "crashed", 1.0)
    assert vm["state"] == "crashed", vm
    assert time.monotonic() - t0 < 1.0
    assert "SIGKILL" in str(vm["exit_reason"]) or "exited" in str(vm["exit_reason"])
    assert vm["pid"] is None
    # a crashed VM can start again
    assert c.start("keep", wait=True)["state"] == "running"


def test_vm_that_died_while_daemon_was_down_is_crashed(daemon: Daemon) -> None:
    c = daemon.client
    vm = c.get("keep")
    assert vm["state"] == "running"
    daemon.stop()
    os.kill(vm["pid"], signal.SIGKILL)
    daemon.start()
    vm = daemon.client.get("keep")
    assert vm["state"] == "crashed"
    assert "gone" in str(vm["exit_reason"])
    daemon.client.destroy("keep")


def test_daemon_killed_mid_start_leaves_a_consistent_store(daemon: Daemon) -> None:
    import threading

    c = daemon.client
    c.create("mid")
    errors: list[BaseException] = []

    def start() -> None:
        try:
            Client(daemon.socket).start("mid")
        except BaseException as err:  # the daemon dies under it
            errors.append(err)

    t = threading.Thread(target=start)
    t.start()
    time.sleep(0.02)
    daemon.stop(signal.SIGKILL)
    t.join(10)
    daemon.start()
    vm = daemon.client.get("mid")
    # either the start never happened, or its QEMU was found and adopted
    assert vm["state"] in ("defined", "stopped", "running"), vm
    if vm["state"] == "running":
        assert vm["pid"] and vm["qemu_status"] == "running"
    daemon.client.destroy("mid")


def test_a_home_removed_while_its_vms_ran_leaves_no_qemu(daemon: Daemon) -> None:
    """``rm -rf`` of the home while a VM ran (its store gone): the next daemon of that home
    ends the QEMU no record owns and removes its cgroups, and a VM made again under the same
    name runs once, in a group of its own."""
    from corral.config import Paths
    from corral.engine.qemu.process import start_time
    from corral.host import cgroups

    c = daemon.client
    pid = c.create("wiped", start=True)["pid"]
    tag = Paths(daemon.home).tag
    assert "wiped" in cgroups.groups_of(tag)
    daemon.stop()
    shutil.rmtree(daemon.home)
    daemon.home.mkdir()
    daemon.start()
    assert daemon.client.list() == []
    deadline = time.monotonic() + 10  # (a zombie until the host's init reaps it)
    while start_time(pid) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert start_time(pid) is None
    assert cgroups.groups_of(tag) == {}
    assert "no record of this daemon's home owns it" in (daemon.home / "daemon.log").read_text()
    again = daemon.client.create("wiped", start=True)["pid"]
    assert {p for g in cgroups.groups_of(tag)["wiped"] for p in cgroups.members(g)} == {again}
    daemon.client.destroy("wiped")
