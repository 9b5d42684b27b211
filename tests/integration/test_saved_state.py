"""Save and restore on real guests: the guest carries on exactly where it stopped."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.errors import CorralError

from .conftest import COUNTER, Daemon, qemu_pids


def counter(d: Daemon, name: str) -> int:
    return int(d.client.exec(name, ["cat", "/tmp/counter"])["stdout"])


def uptime(d: Daemon, name: str) -> float:
    return float(d.client.exec(name, ["cat", "/proc/uptime"])["stdout"].split()[0])


@pytest.fixture(scope="module")
def vm(daemon: Daemon) -> Iterator[str]:
    daemon.client.create("sv", start=True, wait=True)
    daemon.client.exec("sv", ["sh", "-c", COUNTER])
    # its user-mode DHCP lease first, so the addresses compared across a save are settled
    # ones (on a busy host the lease can come after the guest agent answers)
    deadline = time.monotonic() + 60
    while not all(i["ipv4"] for i in daemon.client.addresses("sv") if i["name"] != "lo"):
        assert time.monotonic() < deadline, daemon.client.addresses("sv")
        time.sleep(0.2)
    time.sleep(0.3)
    yield "sv"
    with contextlib.suppress(CorralError):
        daemon.client.destroy("sv")


def test_save_restore_continues_the_guest(daemon: Daemon, vm: str) -> None:
    c = daemon.client
    ip_before = [(i["name"], i["mac"], i["ipv4"]) for i in c.addresses(vm)]
    t0 = time.monotonic()
    before, up_before = counter(daemon, vm), uptime(daemon, vm)
    saved = c.save(vm)
    assert saved["state"] == "saved" and saved["pid"] is None
    assert qemu_pids(str(daemon.home)) == []  # its QEMU is gone while saved
    state_file = daemon.home / "vms" / vm / "saved.state"
    assert state_file.is_file() and state_file.stat().st_size > 1 << 20
    time.sleep(2)  # time passes on the host while the guest is saved
    restored = c.restore(vm, wait=True)
    assert restored["state"] == "running" and restored["ready"]
    up_after, after = uptime(daemon, vm), counter(daemon, vm)
    host_elapsed = time.monotonic() - t0
    # the guest's clock stood still while it was saved: it counted at most the host's time
    # outside the 2 s sleep (plus a little for the reads' rounding), however busy the host
    # made the save, the restore and the reads
    guest_elapsed = up_after - up_before
    assert 0 <= guest_elapsed <= host_elapsed - 2 + 0.3, (up_before, up_after, host_elapsed)
    # and the counter carries on from where it was: no reset, no more ticks (one each
    # 50 ms of the guest's time) than its clock allows
    assert before <= after <= before + guest_elapsed / 0.05 + 20, (before, after)
    time.sleep(0.3)
    assert counter(daemon, vm) > after  # the counting process still runs
    assert [(i["name"], i["mac"], i["ipv4"]) for i in c.addresses(vm)] == ip_before
    assert not state_file.exists()  # a managed save is used up by its restore
    # the guest clock was set from the host's
    guest_now = int(c.exec(vm, ["date", "+%s"])["stdout"])
    assert abs(guest_now - time.time()) < 3


def test_paused_save_restores_paused_and_start_restores(daemon: Daemon, vm: str) -> None:
    c = daemon.client
    c.pause(vm)
    assert c.save(vm)["state"] == "saved"
    vm_view = c.start(vm)  # starting a saved VM restores it
    assert vm_view["state"] == "paused"
    c.resume(vm)
    c.wait_ready(vm, timeout=30)
    first = counter(daemon, vm)
    time.sleep(0.3)
    assert counter(daemon, vm) > first


def test_a_copy_to_a_full_disk_leaves_no_file_and_the_state_safe(daemon: Daemon,
                                                                   vm: str) -> None:
    small = Path(tempfile.mkdtemp(prefix="corral-full-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", str(small)], check=True)
    try:
        target = small / "vm.state"
        res = daemon.cli("save", vm, "--file", str(target))
        assert res.returncode == 1
        assert "cannot write the state" in res.stderr and res.stderr.count("\n") == 1
        assert list(small.iterdir()) == []  # no partial copy
        # the daemon wrote the state in its own home: the VM is saved and comes back whole
        assert daemon.client.get(vm)["state"] == "saved"
        first = counter_after_restore(daemon, vm)
        time.sleep(0.3)
        assert counter(daemon, vm) > first
    finally:
        subprocess.run(["umount", str(small)], check=True)
        small.rmdir()


def counter_after_restore(d: Daemon, name: str) -> int:
    d.client.restore(name, wait=True)
    return counter(d, name)


def test_a_downloaded_copy_and_an_unreadable_state(daemon: Daemon, vm: str,
                                                   tmp_path: Path) -> None:
    c = daemon.client
    target = tmp_path / "my.state"
    c.save(vm, file=str(target))
    managed = daemon.home / "vms" / vm / "saved.state"
    good = managed.read_bytes()
    assert target.read_bytes() == good  # the copy is byte-identical
    managed.write_bytes(good[: len(good) // 3])  # damaged: QEMU cannot accept it
    with pytest.raises(CorralError) as info:
        c.restore(vm)
    assert "the saved state is kept" in info.value.message
    vm_view = c.get(vm)
    assert vm_view["state"] == "saved" and managed.exists()
    assert qemu_pids(str(daemon.home)) == []
    managed.write_bytes(target.read_bytes())  # the copy puts it right
    assert c.restore(vm, wait=True)["state"] == "running"
    assert target.exists()  # the user's own copy is theirs
    os.unlink(target)
