"""Fixtures for tests that boot real QEMU guests under the real daemon.

Stages follow the lifecycle: an image (built once per run), a daemon per module (its own
``CORRAL_HOME``, torn down with a leak check), and VMs made through a factory that destroys
what it made and prints the serial log of a VM whose test failed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.client import Client
from corral.errors import CorralError

ROOT = Path(__file__).resolve().parents[2]
CORRAL = str(Path(sys.executable).parent / "corral")

pytestmark = pytest.mark.integration
HOMES: list[Path] = []  # every data directory this test session made


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "integration tests run as root"
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed (make test installs it)"
    return None


@pytest.fixture(scope="session")
def image_path() -> str:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    paths = [p for p in os.environ.get("CORRAL_IMAGE_PATH", "").split(":") if p]
    if not any((Path(p) / "tiny" / "image.json").is_file() for p in paths):
        from corral.images.tiny import build_tiny

        build_tiny(ROOT / "build" / "images" / "tiny")
        paths.append(str(ROOT / "build" / "images"))
    return ":".join(paths)


# A guest process that counts 20 times a second in /tmp/counter, written aside and renamed
# (a reader never finds it empty mid-write) and there before the command returns (a reader
# right after starting it finds 0, however slow the guest).
COUNTER = ("echo 0 > /tmp/counter; (i=0; while :; do i=$((i+1)); echo $i > /tmp/counter.new; "
           "mv /tmp/counter.new /tmp/counter; sleep 0.05; done) >/dev/null 2>&1 &")


def assert_clock_is_now(d: Daemon, vm: str, margin: float = 2.0) -> None:
    """The guest's clock reads the host's time within ``margin`` seconds: its ``date +%s``
    (whole seconds, so up to one behind) is bracketed by the host's time before and after
    the command, so a slow exec on a busy host is not counted as the guest's error."""
    before = time.time()
    res = d.client.exec(vm, ["date", "+%s"], timeout=30)
    after = time.time()
    guest = int(res["stdout"])
    assert before - 1 - margin < guest < after + margin, (before, guest, after)


def qemu_pids(marker: str) -> list[int]:
    """QEMU processes whose command line mentions ``marker`` (zombies excluded)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if b"qemu-system" in cmd and marker.encode() in cmd and state != "Z":
            pids.append(int(proc.name))
    return pids


class Daemon:
    """A ``corral serve`` subprocess with its own data directory."""

    def __init__(self, home: Path, image_path: str, **env: str) -> None:
        self.home = home
        self.socket = Path(env.get("CORRAL_SOCKET", home / "corral.sock"))
        self.env = {**os.environ, "CORRAL_HOME": str(home), "CORRAL_IMAGE_PATH": image_path,
                    "CORRAL_SOCKET": str(self.socket), **env}
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = Client(self.socket, timeout=180)

    def start(self) -> None:
        with (self.home / "daemon.log").open("ab") as log:
            self.proc = subprocess.Popen([CORRAL, "serve"], env=self.env, stdout=log,
                                         stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(CorralError):
                self.client.host_info()
                return
            assert self.proc.poll() is None, (self.home / "daemon.log").read_text()
            time.sleep(0.05)
        raise AssertionError("daemon did not come up")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.client.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(20)
        self.proc = None

    def cli(self, *args: str, check: bool = False, timeout: float = 180
            ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([CORRAL, *args], env=self.env, capture_output=True, text=True,
                             timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"corral {' '.join(args)} -> {res.returncode}: {res.stderr}")
        return res

    def wait_serial(self, name: str, text: str, count: int = 1, within: float = 15) -> str:
        """The serial log once ``text`` appears in it ``count`` times (or the deadline)."""
        deadline = time.monotonic() + within
        while (log := self.serial(name)).count(text) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return log

    def serial(self, name: str) -> str:
        path = self.home / "vms" / name / "serial.log"
        return path.read_text(errors="replace") if path.exists() else ""


def remove_everything(c: Client) -> None:
    """Take down what a networking test made through ``c``: forwards, routers, VMs, networks
    (in that order, each user before what it uses)."""
    with contextlib.suppress(CorralError):
        for f in c.forward_list():
            c.forward_delete(f["router"], f["proto"], f["host_port"])
        for r in c.router_list():
            for leg in r["networks"]:
                c.router_detach(r["name"], leg["network"])
            c.router_delete(r["name"])
        for vm in c.list():
            c.destroy(vm["name"])
        for n in c.network_list():
            c.network_delete(n["name"])


def assert_nothing_left(home: Path, run_dir: Path | None = None) -> None:
    assert qemu_pids(str(home)) == [], "QEMU processes left behind"
    if run_dir is None:
        from corral.config import Paths

        run_dir = Paths(home).run
    leftovers = [p for p in run_dir.rglob("*")] if run_dir.exists() else []
    assert leftovers == [], f"files left in the run directory: {leftovers}"
    from corral.config import Paths

    outside = Paths(home).outside
    assert not outside.exists(), f"{outside} left behind"
    vms = home / "vms"
    assert not vms.exists() or list(vms.iterdir()) == [], "VM directories left behind"
    guard = f"table inet corral-qemu-{Paths(home).tag}"  # the host guard (once no QEMU runs)
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert guard not in tables.splitlines(), f"{guard} left behind"
    groups = [g for depth in range(4) for g in Path("/sys/fs/cgroup").glob(
        "*/" * depth + f"corral-{Paths(home).tag}-*")]
    assert groups == [], f"cgroups left behind: {groups}"


@contextlib.contextmanager
def running_daemon(image_path: str, **env: str) -> Iterator[Daemon]:
    """A daemon with its own data directory (and settings), torn down with a leak check."""
    home = Path(tempfile.mkdtemp(prefix="crl-", dir="/tmp"))
    HOMES.append(home)
    d = Daemon(home, image_path, **env)
    d.start()
    try:
        yield d
    finally:
        with contextlib.suppress(Exception):
            if d.proc is None:
                d.start()
            for vm in d.client.list():
                d.client.destroy(vm["name"])
        d.stop()
        try:
            assert_nothing_left(home)
        finally:
            for pid in qemu_pids(str(home)):
                os.kill(pid, signal.SIGKILL)
            shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon(image_path: str) -> Iterator[Daemon]:
    with running_daemon(image_path) as d:
        yield d


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture
def make_vm(daemon: Daemon, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Create (and by default start) VMs; destroy them after the test, dumping the serial log
    of each when the test failed."""
    made: list[str] = []

    def make(name: str, start: bool = True, **spec: Any) -> dict[str, Any]:
        made.append(name)
        out: dict[str, Any] = daemon.client.create(name, start=start, wait=start, **spec)
        return out

    yield make
    failed = getattr(request.node, "rep_call", None)
    for name in made:
        if failed is not None and failed.failed:
            print(f"\n--- serial log of {name} ---\n{daemon.serial(name)[-3000:]}")
        with contextlib.suppress(CorralError):
            daemon.client.destroy(name)


@pytest.fixture(scope="session", autouse=True)
def nothing_left_after_the_suite() -> Iterator[None]:
    """After every integration test: no QEMU of a test home and no run directory remain."""
    yield
    for home in HOMES:
        assert qemu_pids(str(home)) == [], f"QEMU processes of {home} are still running"
        assert not home.exists(), f"test home {home} left behind"
