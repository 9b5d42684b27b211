"""Live migration through the daemons: ``corral migrate VM --to HOST`` and ``corral host
drain`` on the three-host namespace cluster (:mod:`tests.integration.cluster_hosts`). One
tiny guest in all, with a local data disk and a user-mode NIC: it moves h1 → h2 (its counter
keeps counting, its disk's contents come along), is drained off h2, and a cancelled and a
cut migration leave it running where it was with nothing of it on the target.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from corral.errors import CorralError
from tests.integration.cluster_fixture import DOWN_AFTER, HostDaemon, three_hosts
from tests.integration.cluster_hosts import wait_for
from tests.integration.conftest import CORRAL, COUNTER, qemu_pids

pytestmark = pytest.mark.integration

VM = "mig"
DEV = "/dev/vda"
# rewrites 48 MiB of guest RAM over and over at the lowest priority: a migration with a
# tiny downtime limit then does not converge until it is stopped
DIRTY = ("nice -n 19 sh -c 'while :; do dd if=/dev/zero of=/tmp/dirty bs=1M count=48 "
         "2>/dev/null; done' >/dev/null 2>&1 &")

# a slow link and a tiny downtime limit: the migration surely runs a while
SLOW = ("--max-downtime", "1", "--bandwidth", "4", "--timeout", "90")


@pytest.fixture(scope="module")
def cluster(image_path: str) -> Iterator[dict[str, HostDaemon]]:
    with three_hosts(image_path) as hosts:
        yield hosts


def sh(d: HostDaemon, command: str) -> str:
    res = d.cli("exec", VM, "--", "sh", "-c", command, check=True)
    return res.stdout


def where(d: HostDaemon) -> str | None:
    return {v["name"]: v.get("host") for v in d.client.list()}.get(VM)


def nothing_of_it(d: HostDaemon) -> bool:
    """No QEMU, run directory, files or record of the VM on host ``d``."""
    pids = qemu_pids(str(d.home))
    files = (d.home / "vms" / VM).exists() or (d.home / "run" / VM).exists()
    return not pids and not files and VM not in {v["name"] for v in d.client.list(host=d.name)}


def taps_of(d: HostDaemon) -> list[str]:
    out = subprocess.run(["ip", "-n", d.ns, "-o", "link", "show", "type", "tun"],
                         capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def test_a_running_vm_moves_and_keeps_running(cluster: dict[str, HostDaemon]) -> None:
    h1, h2, h3 = cluster["h1"], cluster["h2"], cluster["h3"]
    vm = h1.json("run", VM, "--host", "h1", "--memory", "256M", "--disk", "64M")
    assert vm["host"] == "h1" and vm["ready"]
    mac = h1.client.get(VM)["nics"][0]["mac"]
    sh(h1, f"echo moved-with-me | dd of={DEV} conv=fsync 2>/dev/null")
    sh(h1, COUNTER)
    time.sleep(0.5)
    before = int(sh(h1, "cat /tmp/counter"))
    boot_id = sh(h1, "cat /proc/sys/kernel/random/boot_id")
    t0 = time.monotonic()
    res = h1.cli("migrate", VM, "--to", "h2", timeout=300)  # progress on stderr as it goes
    took = time.monotonic() - t0
    assert res.returncode == 0, res.stderr
    assert "sent" in res.stderr and "runs on h2" in res.stdout, (res.stdout, res.stderr)
    encrypted = os.environ.get("CORRAL_MIGRATE_TLS", "1").strip().lower() not in (
        "0", "false", "no", "off", "")
    assert ("encrypted" if encrypted else "(unencrypted)") in res.stdout, res.stdout
    assert ("(unencrypted)" in res.stdout) is not encrypted
    assert not list((h2.home / "vms" / VM).glob(".migrate-tls*"))  # its credentials: gone
    assert where(h3) == "h2"
    shown = h3.json("show", VM)  # forwarded to h2 now
    assert shown["host"] == "h2" and shown["state"] == "running"
    assert shown["last_migration"]["source"] == "h1"
    assert shown["last_migration"]["encrypted"] is encrypted
    assert ("UNENCRYPTED" in h3.cli("show", VM, check=True).stdout) is not encrypted
    assert shown["nics"][0]["mac"] == mac
    assert shown["pid"] in qemu_pids(str(h2.home))
    # the same guest, not a new boot: same boot id, the counter went on
    assert sh(h3, "cat /proc/sys/kernel/random/boot_id") == boot_id, \
        (h2.home / "vms" / VM / "serial.log").read_text(errors="replace")[-3000:]
    after = int(sh(h3, "cat /tmp/counter"))
    assert after > before
    # the gap the guest saw is at most the whole migration (it counts every 50 ms)
    assert (after - before) * 0.05 <= took + 30
    assert sh(h2, f"dd if={DEV} bs=13 count=1 2>/dev/null") == "moved-with-me"
    wait_for(lambda: nothing_of_it(h1), 10, "nothing of the VM left on h1")


def test_refused_before_anything_moves(cluster: dict[str, HostDaemon]) -> None:
    h1, h2 = cluster["h1"], cluster["h2"]
    for args, code, words in ((("--to", "h9"), 3, "no host 'h9'"),
                              (("--to", "h2"), 2, "already on host h2"),
                              ((), 2, "--to")):
        res = h1.cli("migrate", VM, *args)
        assert res.returncode == code and words in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    res = h1.cli("migrate", VM, "--cancel")
    assert res.returncode == 5 and "migrating" in res.stderr
    assert h2.client.get(VM)["state"] == "running"


def _migrate_in_background(d: HostDaemon, to: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([CORRAL, "migrate", VM, "--to", to, "--json", *extra],
                            env=d.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _arriving(d: HostDaemon) -> bool:
    return bool(qemu_pids(str(d.home)))


def _streaming(d: HostDaemon, source: HostDaemon) -> bool:
    """The source's QEMU has connected to the target's: an NBD client per disk copied and
    the migration stream (the place is made, the RAM moves)."""
    copied = sum(not disk["readonly"] for disk in source.client.get(VM)["disks"])
    out = subprocess.run(["ip", "netns", "exec", d.ns, "ss", "-tnpH", "state", "established"],
                         capture_output=True, text=True).stdout
    return out.count('"crl-' + VM + '"') >= copied + 1


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def test_cancel_leaves_the_vm_on_the_source(cluster: dict[str, HostDaemon]) -> None:
    h1, h2, h3 = cluster["h1"], cluster["h2"], cluster["h3"]
    sh(h2, DIRTY)
    proc = _migrate_in_background(h1, "h3", *SLOW)
    try:
        wait_for(lambda: _arriving(h3), 60, "the target's QEMU waits")
        time.sleep(1.0)
        res = h1.cli("migrate", VM, "--cancel", "--json")
    finally:
        code, err = _finish(proc)
    assert res.returncode == 0, (res.stderr, err)
    assert code == 12 and "cancelled" in err, err
    assert h2.client.get(VM)["state"] == "running" and where(h1) == "h2"
    sh(h2, "true")  # the guest answers on the source
    wait_for(lambda: nothing_of_it(h3), 20, "nothing of the VM left on h3")
    assert taps_of(h3) == []


def test_a_cut_link_leaves_the_vm_on_the_source(cluster: dict[str, HostDaemon]) -> None:
    h2, h3 = cluster["h2"], cluster["h3"]
    inner = f"{h3.ns.rsplit('-h', 1)[0]}-i3"
    proc = _migrate_in_background(h2, "h3", *SLOW)
    try:
        wait_for(lambda: _streaming(h3, h2), 60, "the stream to the target's QEMU")
        subprocess.run(["ip", "-n", h3.ns, "link", "set", inner, "down"], check=True)
        code, err = _finish(proc)
    finally:
        subprocess.run(["ip", "-n", h3.ns, "link", "set", inner, "up"], check=True)
        with contextlib.suppress(Exception):
            proc.kill()
    assert code == 12 and "link is cut" in err, err
    assert h2.client.get(VM)["state"] == "running"
    sh(h2, "pkill -f dirty; true")
    wait_for(lambda: nothing_of_it(h3), 90, "nothing of the VM left on h3")


def _running_on(cluster: dict[str, HostDaemon]) -> list[str]:
    """The hosts whose daemon runs the VM (a record and a QEMU)."""
    out = []
    for name, d in cluster.items():
        with contextlib.suppress(CorralError):
            if d.client.get(VM)["state"] == "running" and qemu_pids(str(d.home)):
                out.append(name)
    return out


def test_the_source_daemon_killed_mid_way_leaves_it_on_one_host(
        cluster: dict[str, HostDaemon]) -> None:
    h2, h3 = cluster["h2"], cluster["h3"]
    wait_for(lambda: nothing_of_it(h3), 30, "h3 clean")
    proc = _migrate_in_background(h2, "h3", *SLOW)
    try:
        wait_for(lambda: _arriving(h3), 60, "the target's QEMU waits")
        time.sleep(2.0)
        h2.stop(signal.SIGKILL)  # its QEMUs go on; the stream with them
        _finish(proc)
        # its name is refused to a new daemon while its last heartbeat is fresh
        time.sleep(DOWN_AFTER + 0.5)
    finally:
        with contextlib.suppress(Exception):
            proc.kill()
        h2.start()
    # the restarted daemon stops the stream nobody follows (the guest runs on h2), or the
    # stream had ended (h3 took the name and h2 fences its stopped copy): one host either way
    wait_for(lambda: len(_running_on(cluster)) == 1, 60, "the VM runs on one host")
    host = _running_on(cluster)[0]
    other = cluster["h3" if host == "h2" else "h2"]
    wait_for(lambda: nothing_of_it(other), 90, f"nothing of the VM left on {other.name}")
    assert where(h3) == host and _running_on(cluster) == [host]
    assert int(sh(h3, "cat /tmp/counter")) > 0  # the same guest, still counting


def test_drain_empties_a_host(cluster: dict[str, HostDaemon]) -> None:
    h1 = cluster["h1"]
    wait_for(lambda: {h["state"] for h in h1.json("host", "list")} == {"up"}, 30,
             "every host up")
    src = str(where(h1))
    before = int(sh(cluster[src], "cat /tmp/counter"))
    res = h1.cli("host", "drain", src, "--json")
    assert res.returncode == 0, (res.stdout, res.stderr)
    report: dict[str, Any] = json.loads(res.stdout)
    assert report["left"] == [] and len(report["moves"]) == 1, report
    move = report["moves"][0]
    assert move["ok"] and move["from"] == src and move["to"] != src, move
    assert where(h1) == move["to"]
    assert int(sh(h1, "cat /tmp/counter")) > before
    assert [h["state"] for h in h1.json("host", "list") if h["name"] == src] == ["draining"]
    wait_for(lambda: nothing_of_it(cluster[src]), 10, f"nothing of the VM left on {src}")
    h1.cli("host", "uncordon", src, check=True)
    with contextlib.suppress(CorralError):
        h1.client.destroy(VM)
