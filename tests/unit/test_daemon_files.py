"""What a daemon leaves on the machine outside its home, and how it names what it shares
with other daemons: cgroups and run directories per home, dnsmasq's directories reachable
from a private home, the socket and empty run directories gone however the daemon stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corral.config import Paths
from corral.host import cgroups
from corral.host.network import dnsmasq


def test_two_homes_never_share_a_cgroup_or_a_run_directory(tmp_path: Path) -> None:
    a, b = Paths(tmp_path / "a"), Paths(tmp_path / "b")
    assert a.tag != b.tag and a.tag == Paths(tmp_path / "a").tag
    assert cgroups.group_path(a.tag, "web") != cgroups.group_path(b.tag, "web")
    longest = cgroups.group_path(a.tag, "v" * 32).name
    assert longest.startswith(f"corral-{a.tag}-") and len(longest) < 64
    assert a.outside != b.outside and a.networks.parent == a.outside
    deep = Paths(tmp_path / ("d" * 100))
    assert deep.run == deep.outside  # sockets move out of a home too deep for them


def test_dnsmasq_directories_are_made_searchable_not_listable(tmp_path: Path) -> None:
    target = tmp_path / "outside" / "networks.d"
    old = os.umask(0o077)
    try:
        dnsmasq._make_searchable(target)
    finally:
        os.umask(old)
    for dir in (target, target.parent):
        assert dir.stat().st_mode & 0o777 == 0o711
    tmp_path.chmod(0o700)  # an existing directory is left as it is
    dnsmasq._make_searchable(target)
    assert tmp_path.stat().st_mode & 0o777 == 0o700


def test_only_empty_run_directories_are_removed(tmp_path: Path) -> None:
    paths = Paths(tmp_path / "home")
    run = paths.run
    (run / "gone").mkdir(parents=True)
    (run / "networks.d" / "corral-nlan").mkdir(parents=True)
    (run / "web").mkdir()
    (run / "web" / "qmp.sock").touch()
    paths.remove_leftovers()
    assert sorted(p.name for p in run.iterdir()) == ["web"]
    (run / "web" / "qmp.sock").unlink()
    paths.remove_leftovers()
    assert not run.exists()
    paths.remove_leftovers()  # nothing there: nothing to do


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_daemon_leaves_no_socket(tmp_path: Path, sig: int) -> None:
    home = tmp_path / "home"
    sock = home / "corral.sock"
    env = {**os.environ, "CORRAL_HOME": str(home), "CORRAL_SOCKET": str(sock),
           "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", "from corral.daemon import main; main()"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not _answers(sock):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.05)
        proc.send_signal(sig)
        proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
    assert not sock.exists()
    assert not Paths(home).run.exists()  # no VM lived there: its directory went too


def _answers(sock: Path) -> bool:
    from corral.client import Client
    from corral.errors import CorralError

    client = Client(sock, timeout=2)
    try:
        client.host_info()
    except CorralError:
        return False
    finally:
        client.close()
    return True
