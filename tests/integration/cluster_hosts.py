"""Stand-ins for a cluster on one machine: a throw-away PostgreSQL and hosts that are network
namespaces.

* :class:`Postgres` runs Debian's PostgreSQL 15 as the ``postgres`` user (``initdb`` refuses
  root) on a unix socket in a temporary directory, with no TCP.
* :class:`Underlay` is a bridge with one veth per namespace (``crlt-hN``, 10.251.0.N/24):
  each host's daemon runs inside its namespace with its own ``CORRAL_HOME`` and QEMUs. The
  namespaces share the filesystem, so every daemon reaches PostgreSQL's socket.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from corral.errors import CorralError
from tests.integration.conftest import CORRAL, HOMES, Daemon, assert_nothing_left, qemu_pids

PG_BIN = Path("/usr/lib/postgresql/15/bin")
#: the names' prefix and the underlay's second octet; two suites running at once on one
#: machine (engineers' work trees) set CORRAL_TEST_UNDERLAY=crlu:252 so their hosts differ
_PREFIX, _, _OCTET = os.environ.get("CORRAL_TEST_UNDERLAY", "crlt:251").partition(":")
BRIDGE = f"{_PREFIX}-ul"


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


class Postgres:
    """One PostgreSQL server for a test module; ``url`` is a ``postgresql://`` URL."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="crlt-pg-", dir="/tmp"))
        self.dir.chmod(0o755)
        shutil.chown(self.dir, "postgres")
        self.data = self.dir / "data"
        self.url = f"postgresql://postgres@/postgres?host={self.dir}"

    def _as_postgres(self, *argv: str) -> None:
        _run("runuser", "-u", "postgres", "--", *argv)

    def init(self) -> None:
        self._as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust")
        self.start()

    def start(self) -> None:
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-o",
                          f"-k {self.dir} -c listen_addresses='' -c fsync=off",
                          "-l", str(self.dir / "log"), "start")

    def stop(self) -> None:
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-m", "fast",
                          "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Underlay:
    """A bridge and namespaces ``crlt-h1`` … joined to it by veths."""

    prefix = _PREFIX

    def __init__(self) -> None:
        self.namespaces: list[str] = []

    def up(self) -> None:
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "link", "set", BRIDGE, "up")

    def add(self, n: int) -> tuple[str, str]:
        """Namespace ``crlt-hN`` with address 10.251.0.N; returns (namespace, address)."""
        ns, outer, inner = f"{_PREFIX}-h{n}", f"{_PREFIX}-v{n}", f"{_PREFIX}-i{n}"
        _run("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        _run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        _run("ip", "link", "set", outer, "master", BRIDGE, "up")
        _run("ip", "link", "set", inner, "netns", ns)
        _run("ip", "-n", ns, "addr", "add", f"10.{_OCTET}.0.{n}/24", "dev", inner)
        _run("ip", "-n", ns, "link", "set", inner, "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        return ns, f"10.{_OCTET}.0.{n}"

    def down(self) -> None:
        for ns in self.namespaces:
            with contextlib.suppress(subprocess.CalledProcessError):
                _run("ip", "netns", "del", ns)
        for n in range(1, 10):
            with contextlib.suppress(subprocess.CalledProcessError):
                _run("ip", "link", "del", f"{_PREFIX}-v{n}")
        with contextlib.suppress(subprocess.CalledProcessError):
            _run("ip", "link", "del", BRIDGE)


def netns_inode(pid: int) -> int:
    return Path(f"/proc/{pid}/ns/net").stat().st_ino


def namespace_inode(ns: str) -> int:
    return Path(f"/run/netns/{ns}").stat().st_ino


def wait_for(check: object, within: float, what: str, step: float = 0.2) -> float:
    """Poll ``check()`` until true; return the seconds it took.

    :raises AssertionError: not true within ``within`` seconds.
    """
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        if check():  # type: ignore[operator]
            return time.monotonic() - t0
        time.sleep(step)
    raise AssertionError(f"{what}: not within {within:g} s")


# shorter than the defaults (1 s, 6 s) to keep the suite short; CORRAL_TEST_HEARTBEAT=1
# CORRAL_TEST_DOWN_AFTER=6 measures the failover with the defaults
DOWN_AFTER = float(os.environ.get("CORRAL_TEST_DOWN_AFTER", "3"))
SETTINGS = {"CORRAL_HOST_CPUS": "2", "CORRAL_HOST_MEMORY": "1G", "CORRAL_CPU_RATIO": "1",
            "CORRAL_MEMORY_RATIO": "1",
            "CORRAL_HEARTBEAT": os.environ.get("CORRAL_TEST_HEARTBEAT", "0.5"),
            "CORRAL_DOWN_AFTER": str(DOWN_AFTER)}


class HostDaemon(Daemon):
    """A daemon inside a network namespace: a host of the cluster."""

    def __init__(self, name: str, ns: str, address: str, image_path: str, url: str,
                 **env: str) -> None:
        home = Path(tempfile.mkdtemp(prefix=f"crl-{name}-", dir="/tmp"))
        HOMES.append(home)
        super().__init__(home, image_path, **{
            **SETTINGS, "CORRAL_CLUSTER": url, "CORRAL_HOST_NAME": name,
            "CORRAL_LISTEN": f"{address}:7443", **env})
        self.name = name
        self.ns = ns
        self.address = address

    def start(self) -> None:
        with (self.home / "daemon.log").open("ab") as log:
            self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, CORRAL, "serve"],
                                         env=self.env, stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL)
        wait_for(self._up, 30, f"daemon of {self.name} up")

    def _up(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, (self.home / "daemon.log").read_text()
        try:
            self.client.host_info()
            return True
        except CorralError:
            return False

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json", check=True).stdout)


@contextlib.contextmanager
def three_hosts(image_path: str, **extra: str) -> Iterator[dict[str, HostDaemon]]:
    """Three hosts h1, h2, h3 (namespaces with their daemons) and PostgreSQL, torn down
    after; ``extra``: more settings for every daemon. Nothing may be left behind."""
    import pytest

    if shutil.which("ip") is None or not Path("/usr/lib/postgresql/15/bin/initdb").exists():
        pytest.skip("needs iproute2 and PostgreSQL 15 (make test installs them)")
    pg, net = Postgres(), Underlay()
    hosts: dict[str, HostDaemon] = {}
    shared = Path(tempfile.mkdtemp(prefix="crlt-shared-", dir="/tmp"))  # stands in for NFS
    shared.chmod(0o711)  # as an export every host's QEMU user may pass through
    try:
        pg.init()
        net.up()
        for n in (1, 2, 3):
            ns, address = net.add(n)
            name = f"h{n}"
            token = {}
            if n > 1:
                token = {"CORRAL_JOIN_TOKEN": hosts["h1"].json("cluster", "token")["token"]}
            hosts[name] = HostDaemon(name, ns, address, image_path, pg.url,
                                     CORRAL_SHARED_DIR=str(shared), **token, **extra)
            hosts[name].start()
        hosts["h1"].pg = pg  # type: ignore[attr-defined]
        yield hosts
    finally:
        for d in hosts.values():
            with contextlib.suppress(Exception):
                if d.proc is None:
                    d.start()
                for vm in d.client.list(host=d.name):
                    d.client.destroy(vm["name"])
        for d in hosts.values():
            d.stop()
        keep = os.environ.get("CORRAL_TEST_KEEP_LOGS")  # a directory for the daemons' logs
        if keep:
            for d in hosts.values():
                with contextlib.suppress(OSError):
                    shutil.copy(d.home / "daemon.log", Path(keep) / f"{d.name}.log")
        try:
            for d in hosts.values():
                assert_nothing_left(d.home)
        finally:
            for d in hosts.values():
                for pid in qemu_pids(str(d.home)):
                    os.kill(pid, signal.SIGKILL)
                shutil.rmtree(d.home, ignore_errors=True)
            net.down()
            pg.remove()
            leftovers = list((shared / "vms").iterdir()) if (shared / "vms").exists() else []
            shutil.rmtree(shared, ignore_errors=True)
            assert leftovers == [], f"shared files left: {leftovers}"


