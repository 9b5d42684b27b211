"""The daemon killed (``kill -9``) inside an operation: the next daemon on the same home
settles every VM so that the store, the QEMU processes and the files agree and the VM is
usable.

For each of create, start, save, restore, snapshot (disk-only on a running and on a stopped
VM, and ``--memory``), rm, stop and pause, the operation is started through the Client in a
thread, the daemon is killed at a delay that is a fraction of how long the operation takes on
an idle machine (``NOMINAL``), and a new daemon is started on the same home. Where exactly the
kill lands does not matter: every landing point must pass. After the restart:

* the VM is in a settled state (never saving, restoring, starting, stopping);
* a VM that says running or paused has exactly its one live QEMU (and QEMU agrees whether
  the guest runs); one that says defined, stopped, crashed or saved has none, and no pidfile
  or socket in its run directory;
* a saved VM has its state file, and restoring it brings the guest back; a VM that is not
  saved has no state file;
* the snapshots in the store are the tags on the VM's disks, a snapshot name from an
  interrupted snapshot can be used again, and ``snapshot rm`` of a listed one works;
* no ``.*.tmp-*`` file and no directory of a VM the store does not know is left in the home;
* ``rm`` works, and the module's leak check passes at the end.

The default run kills each operation at a handful of delays (a few minutes for the whole
module; each case prints where its kill landed and what the VM was after, shown with
``-s``). ``CORRAL_CRASH_SWEEP=1`` sweeps fourteen delays per operation (about five
minutes)::

    CORRAL_CRASH_SWEEP=1 pytest -q tests/integration/test_crash_windows.py
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from corral.client import Client
from corral.config import Paths
from corral.errors import NotFound

from .conftest import Daemon, qemu_pids

#: Seconds each operation takes on an idle 2-core machine with a 256 MiB tiny guest.
NOMINAL = {
    "create": 0.03, "start": 0.2, "save": 0.15, "restore": 0.25, "snapshot": 0.12,
    "snapshot_memory": 0.12, "snapshot_stopped": 0.025, "rm": 0.04, "stop": 0.015,
    "pause": 0.008,
}
SWEEP = os.environ.get("CORRAL_CRASH_SWEEP") == "1"
#: Where the kill lands, as fractions of the nominal time (past 1: just after it, or, on a
#: busy machine, still inside it).
FRACTIONS = ((0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.5, 2.0) if SWEEP
             else (0.05, 0.35, 0.7, 1.1))

SETTLED = {"defined", "stopped", "crashed", "saved", "running", "paused"}
LIVE = {"running", "paused"}
DISK = [{"size": "64M"}]


# ----- killing the daemon inside an operation -------------------------------------------------
#: A moment to kill the daemon at: a delay after the request was sent, or a condition on the
#: home (made for the daemon under test) that is polled from the moment the request is sent.
Moment = float | Callable[[Daemon], Callable[[], bool]]


def crash_during(d: Daemon, call: Callable[[Client], object], when: Moment) -> None:
    """Run ``call`` in a thread, kill the daemon at ``when``, and start a new daemon on the
    same home."""
    failure: list[BaseException] = []
    ready = None if isinstance(when, float) else when(d)

    def run() -> None:
        client = Client(d.socket, timeout=60)
        try:
            call(client)
        except BaseException as err:  # the daemon dies under it, or it refused
            failure.append(err)
        finally:
            client.close()

    thread = threading.Thread(target=run)
    t0 = time.monotonic()
    thread.start()
    if ready is None:
        assert isinstance(when, float)
        time.sleep(max(0.0, t0 + when - time.monotonic()))
    else:  # a condition that never comes (the operation was quicker) kills it afterwards
        while not ready() and thread.is_alive() and time.monotonic() < t0 + 30:
            time.sleep(0.0005)
    landed = time.monotonic() - t0
    d.stop(signal.SIGKILL)
    thread.join(60)
    assert not thread.is_alive(), "the request outlived the daemon"
    d.start()
    answered = "answered" if not failure else type(failure[0]).__name__
    print(f"killed {landed * 1000:.1f} ms after the request ({answered})", end=": ")


def moments(op: str, **markers: Callable[[Daemon], Callable[[], bool]]) -> list[Any]:
    """The delays at which ``op`` is cut short, then the named conditions."""
    return ([pytest.param(round(NOMINAL[op] * f, 4), id=f"{f:g}x") for f in FRACTIONS]
            + [pytest.param(m, id=k) for k, m in markers.items()])


def appears(pattern: str) -> Callable[[Daemon], Callable[[], bool]]:
    """When something matching ``pattern`` (relative to the home) exists."""
    return lambda d: lambda: any(d.home.glob(pattern))


def vanishes(pattern: str) -> Callable[[Daemon], Callable[[], bool]]:
    """When what matches ``pattern`` now (relative to the home) is gone."""
    def arm(d: Daemon) -> Callable[[], bool]:
        there = list(d.home.glob(pattern))
        assert there, f"nothing matches {pattern}"
        return lambda: not any(p.exists() for p in there)
    return arm


def noted(name: str) -> Callable[[Daemon], Callable[[], bool]]:
    """When the store holds a pending note for ``name`` (an operation is under way)."""
    def arm(d: Daemon) -> Callable[[], bool]:
        def there() -> bool:
            with contextlib.closing(sqlite3.connect(f"file:{d.home / 'corral.db'}?mode=ro",
                                                    uri=True, timeout=1)) as db:
                row = db.execute("SELECT value FROM kv WHERE key = ?",
                                 (f"pending/{name}",)).fetchone()
            return row is not None and row[0] != "null"
        return there
    return arm


def qemu_ends(name: str) -> Callable[[Daemon], Callable[[], bool]]:
    """When the VM's QEMU (running now) has exited."""
    def arm(d: Daemon) -> Callable[[], bool]:
        pids = qemus(d, name)
        assert pids, f"{name} has no QEMU"
        return lambda: qemus(d, name) == []
    return arm


# ----- what must agree after a restart ----------------------------------------------------------
def find(c: Client, name: str) -> dict[str, Any] | None:
    try:
        vm: dict[str, Any] = dict(c.get(name))
    except NotFound:
        return None
    return vm


def qemus(d: Daemon, name: str) -> list[int]:
    # the serial log's path is on every QEMU command line (the sockets are descriptors)
    return qemu_pids(f"logfile={Paths(d.home).vm_dir(name) / 'serial.log'},")


def disk_tags(vm: dict[str, Any], home: Path) -> tuple[set[str], set[str]]:
    """The snapshot tags on the VM's writable qcow2 disks, and on its state file."""
    def tags(path: str) -> set[str]:
        out = subprocess.run(["qemu-img", "snapshot", "-U", "-l", path], capture_output=True,
                             text=True, check=True).stdout.splitlines()
        return {line.split()[1] for line in out[2:] if line.split()}

    disks: set[str] = set()
    for disk in vm["disks"]:
        if not disk["readonly"] and disk["format"] == "qcow2":
            disks |= tags(disk["path"])
    return disks, tags(str(home / "vms" / vm["name"] / "vmstate.qcow2"))


def agree(d: Daemon, name: str, within: float = 5.0, saved_file: Path | None = None
          ) -> dict[str, Any] | None:
    """Check that store, QEMU processes and files agree about ``name`` (and about the home);
    the VM's view, or None when the store has no such VM.

    A QEMU that went on with its part after the daemon died (a migration, a snapshot job) may
    still be finishing it: the check is retried for ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            vm = _agree(d, name, saved_file)
            print(f"{name} {vm['state'] if vm else 'absent'}")
            return vm
        except AssertionError:
            if time.monotonic() > deadline:
                print((d.home / "daemon.log").read_text()[-3000:])
                raise
            time.sleep(0.2)


def _agree(d: Daemon, name: str, saved_file: Path | None) -> dict[str, Any] | None:
    c = d.client
    names = {vm["name"] for vm in c.list()}
    vms = d.home / "vms"
    strays = {p.name for p in vms.iterdir()} - names if vms.is_dir() else set()
    assert strays == set(), f"directories of VMs the store does not know: {strays}"
    tmps = [p for p in d.home.rglob(".*.tmp-*")] + list(d.home.glob(".blank-vmstate.*.qcow2"))
    assert tmps == [], f"temporary files left: {tmps}"
    vm = find(c, name)
    pids = qemus(d, name)
    if vm is None:
        assert pids == [], f"QEMU {pids} runs for a VM the store does not know"
        return None
    state = vm["state"]
    assert state in SETTLED, f"{name} is {state} after a restart"
    run = Paths(d.home).run_dir(name)
    if state in LIVE:
        assert pids == [vm["pid"]], f"{name} is {state} with pid {vm['pid']}; QEMUs: {pids}"
        assert (vm["qemu_status"] == "running") == (state == "running"), vm["qemu_status"]
    else:
        assert pids == [] and vm["pid"] is None, f"{name} is {state}; QEMUs: {pids}"
        left = [p.name for p in run.iterdir()] if run.is_dir() else []
        assert left == [], f"{name} is {state} but its run directory holds {left}"
    managed = vms / name / "saved.state"
    state_file = saved_file or managed
    assert managed.exists() == (state == "saved" and saved_file is None), (
        f"{name} is {state}; saved.state {'exists' if managed.exists() else 'is missing'}")
    if state == "saved":
        assert state_file.is_file(), f"{name} is saved but {state_file} is missing"
    listed = {s["name"] for s in c.snapshot_list(name)}
    on_disks, on_vmstate = disk_tags(vm, d.home)
    assert on_disks == listed, f"tags on the disks {on_disks}, in the store {listed}"
    assert on_vmstate <= listed, f"tags in the state file {on_vmstate}, in the store {listed}"
    return vm


# ----- bringing a VM to where an operation starts ---------------------------------------------
def usable(d: Daemon, name: str, ready: bool = False) -> str:
    """Bring a settled VM back to running the way its state offers (restore a saved one,
    resume a paused one, start one that is off), check QEMU runs it, and return the state
    the crash left it in."""
    c = d.client
    vm = find(c, name)
    if vm is None:
        c.create(name, disks=DISK)
        vm = dict(c.get(name))
    state = vm["state"]
    if state == "saved":
        vm = dict(c.restore(name))
    if vm["state"] == "paused":
        vm = dict(c.resume(name))
    if vm["state"] in ("defined", "stopped", "crashed"):
        vm = dict(c.start(name, wait=ready))
    assert vm["state"] == "running", vm
    assert c.get(name)["qemu_status"] == "running"
    if ready:
        c.wait_ready(name, timeout=60)
        assert c.exec(name, ["true"], timeout=30)["exitcode"] == 0
    return str(state)


def bring_to(d: Daemon, name: str, state: str) -> None:
    """Put ``name`` in ``state``: absent, off (defined or stopped), running, ready (running
    with its agent answering) or saved."""
    c = d.client
    vm = find(c, name)
    if state == "absent":
        if vm is not None:
            c.rm(name)
        return
    if state == "off":
        if vm is None:
            c.create(name, disks=DISK)
        elif vm["state"] in LIVE:
            c.stop(name)
        elif vm["state"] == "saved":
            usable(d, name)
            c.stop(name)
        return
    usable(d, name, ready=state in ("ready", "saved"))
    if state == "saved":
        c.save(name)


def settle_and_check(d: Daemon, name: str) -> dict[str, Any] | None:
    vm = agree(d, name)
    if vm is not None and vm["state"] in ("saved", "paused"):
        usable(d, name, ready=True)  # the saved state restores; the guest runs again
        agree(d, name)
    return vm


def reusable_snapshot(d: Daemon, name: str, tag: str, memory: bool) -> None:
    """The snapshot name of an interrupted snapshot can be used again; a listed snapshot can
    be removed; the store and the disks agree after both."""
    c = d.client
    if tag not in {s["name"] for s in c.snapshot_list(name)}:
        c.snapshot_create(name, tag, memory=memory)
    c.snapshot_rm(name, tag)
    agree(d, name)
    assert tag not in {s["name"] for s in c.snapshot_list(name)}


# ----- the operations ---------------------------------------------------------------------------
@pytest.mark.parametrize("when", moments("create", dir_made=appears("vms/k-create"),
                                         disk_made=appears("vms/k-create/disk0.qcow2")))
def test_create(daemon: Daemon, when: Moment) -> None:
    bring_to(daemon, "k-create", "absent")
    crash_during(daemon, lambda c: c.create("k-create", disks=DISK), when)
    vm = agree(daemon, "k-create")
    assert vm is None or vm["state"] == "defined", vm
    if vm is not None:
        daemon.client.rm("k-create")
    daemon.client.create("k-create", disks=DISK)  # the name is free again
    daemon.client.rm("k-create")
    agree(daemon, "k-create")


@pytest.mark.parametrize("when", moments("start", launched=appears("run/k-start/qemu.pid")))
def test_start(daemon: Daemon, when: Moment) -> None:
    bring_to(daemon, "k-start", "off")
    crash_during(daemon, lambda c: c.start("k-start"), when)
    vm = agree(daemon, "k-start")
    assert vm is not None and vm["state"] in ("defined", "stopped", "crashed", "running"), vm
    usable(daemon, "k-start")
    agree(daemon, "k-start")


@pytest.mark.parametrize("when", moments(
    "save", noted=noted("k-saved"), streaming=appears("vms/k-saved/.saved.state.tmp-*"),
    renamed=appears("vms/k-saved/saved.state"), ended=qemu_ends("k-saved")))
def test_save(daemon: Daemon, when: Moment) -> None:
    bring_to(daemon, "k-saved", "ready")
    crash_during(daemon, lambda c: c.save("k-saved"), when)
    vm = settle_and_check(daemon, "k-saved")
    assert vm is not None and vm["state"] in ("running", "paused", "saved"), vm


def test_save_to_a_file_of_the_users(daemon: Daemon, tmp_path: Path) -> None:
    """A save ``--file`` cut short leaves no partial file beside the target."""
    bring_to(daemon, "k-saved", "ready")
    target = tmp_path / "k.state"
    streaming: Moment = lambda d: lambda: any(tmp_path.glob(".k.state.tmp-*"))  # noqa: E731
    for when in (NOMINAL["save"] * 0.5, streaming):
        crash_during(daemon, lambda c: c.save("k-saved", file=str(target)), when)
        vm = agree(daemon, "k-saved", saved_file=target)
        assert vm is not None
        assert [p.name for p in tmp_path.iterdir()] in ([], ["k.state"]), list(tmp_path.iterdir())
        if vm["state"] == "saved":
            assert target.is_file()
        usable(daemon, "k-saved", ready=True)
        target.unlink(missing_ok=True)


@pytest.mark.parametrize("when", moments(
    "restore", launched=appears("run/k-saved/qemu.pid"),
    used_up=vanishes("vms/k-saved/saved.state")))
def test_restore(daemon: Daemon, when: Moment) -> None:
    bring_to(daemon, "k-saved", "saved")
    crash_during(daemon, lambda c: c.restore("k-saved"), when)
    vm = settle_and_check(daemon, "k-saved")
    assert vm is not None and vm["state"] in ("running", "paused", "saved"), vm


@pytest.mark.parametrize("memory", [False, True], ids=["disk", "memory"])
@pytest.mark.parametrize("fraction", (*FRACTIONS, "noted"),
                         ids=[*(f"{f:g}x" for f in FRACTIONS), "noted"])
def test_snapshot_of_a_running_vm(daemon: Daemon, memory: bool, fraction: float | str
                                  ) -> None:
    when: Moment = noted("k-snap") if fraction == "noted" else (
        NOMINAL["snapshot_memory" if memory else "snapshot"] * float(fraction))
    bring_to(daemon, "k-snap", "running")
    crash_during(daemon, lambda c: c.snapshot_create("k-snap", "s", memory=memory), when)
    vm = settle_and_check(daemon, "k-snap")
    assert vm is not None
    reusable_snapshot(daemon, "k-snap", "s", memory)


@pytest.mark.parametrize("when", moments("snapshot_stopped", noted=noted("k-snap")))
def test_snapshot_of_a_stopped_vm(daemon: Daemon, when: Moment) -> None:
    bring_to(daemon, "k-snap", "off")
    crash_during(daemon, lambda c: c.snapshot_create("k-snap", "s"), when)
    vm = agree(daemon, "k-snap")
    assert vm is not None and vm["state"] not in LIVE, vm
    reusable_snapshot(daemon, "k-snap", "s", False)


@pytest.mark.parametrize("when", moments("rm", ended=qemu_ends("k-rm")))
def test_rm(daemon: Daemon, when: Moment) -> None:
    bring_to(daemon, "k-rm", "running")
    crash_during(daemon, lambda c: c.rm("k-rm"), when)
    vm = agree(daemon, "k-rm")
    if vm is not None:
        daemon.client.rm("k-rm")
        assert agree(daemon, "k-rm") is None


@pytest.mark.parametrize("when", moments("stop", ended=qemu_ends("k-stop")))
def test_stop(daemon: Daemon, when: Moment) -> None:
    bring_to(daemon, "k-stop", "running")
    crash_during(daemon, lambda c: c.stop("k-stop"), when)
    vm = agree(daemon, "k-stop")
    # a machine that ended because it was asked to is stopped, not crashed
    assert vm is not None and vm["state"] in ("running", "stopped"), vm
    usable(daemon, "k-stop")


@pytest.mark.parametrize("when", moments("pause"))
def test_pause(daemon: Daemon, when: Moment) -> None:
    bring_to(daemon, "k-pause", "running")
    crash_during(daemon, lambda c: c.pause("k-pause"), when)
    vm = agree(daemon, "k-pause")
    assert vm is not None and vm["state"] in ("running", "paused"), vm
    usable(daemon, "k-pause")


def test_every_vm_removes_cleanly(daemon: Daemon) -> None:
    """The end of the module: every VM the crashes touched can be removed, and nothing of
    them is left (the daemon fixture's leak check then checks the whole home)."""
    c = daemon.client
    for vm in c.list():
        c.rm(vm["name"])
    assert c.list() == []
    for name in ("k-create", "k-start", "k-saved", "k-snap", "k-rm", "k-stop", "k-pause"):
        assert agree(daemon, name) is None
