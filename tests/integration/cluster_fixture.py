"""The three-host cluster of the integration tests (see :mod:`.cluster_hosts`): daemons in
network namespaces on one underlay, one PostgreSQL; shared by the cluster's test modules."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.errors import CorralError
from tests.integration.cluster_hosts import Postgres, Underlay, wait_for
from tests.integration.conftest import CORRAL, HOMES, Daemon, assert_nothing_left, qemu_pids

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
        super().__init__(home, image_path, **{  # a test's own settings win over SETTINGS
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
def three_hosts(image_path: str, **env: str) -> Iterator[dict[str, HostDaemon]]:
    """Three hosts h1-h3 (namespaces on one underlay) in one cluster on a PostgreSQL made
    here; every VM, daemon, namespace and file goes at the end, and nothing may be left."""
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
                                     CORRAL_SHARED_DIR=str(shared), **token, **env)
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
