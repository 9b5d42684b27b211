"""QEMU that cannot hurt the host: each VM's QEMU runs as the corral-qemu user under its
strictest seccomp filter, in cgroups with memory and pids limits, seeing only its part of a
private home; every file is 0600 (directories 0700); user-mode forwards bind the loopback;
a guest cannot open a connection to the host; a forbidden system call kills QEMU and the VM
is crashed with that reason. All checked on real QEMU processes, through /proc."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from corral.config import Paths
from corral.errors import CorralError

from .conftest import HOMES, Daemon, assert_nothing_left, running_daemon
from .test_networks import free_port, http_get, serve_http, sh, until

GiB = 1 << 30


def status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def cgroup_file(pid: int, controller: str, name: str) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _id, names, path = line.split(":", 2)
        if controller in names.split(","):
            return (Path("/sys/fs/cgroup") / controller / path.lstrip("/") / name
                    ).read_text().strip()
    raise AssertionError(f"QEMU is in no {controller} cgroup")


def listening_on(port: int) -> list[str]:
    """The IPv4 addresses a TCP socket listens on at ``port`` (from /proc/net/tcp)."""
    out = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        addr, hexport = cols[1].split(":")
        if int(hexport, 16) == port and cols[3] == "0A":
            out.append(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return out


def test_qemu_runs_unprivileged_filtered_and_limited(daemon: Daemon, make_vm: Any) -> None:
    port = free_port()
    vm = make_vm("conf", memory="256M", nics=[{"hostfwd": [f"tcp:{port}-:80"]}])
    pid = vm["pid"]
    st = status(pid)
    assert st["Uid"].split()[0] != "0" and st["Gid"].split()[0] != "0", st["Uid"]
    assert st["Seccomp"] == "2" and st["NoNewPrivs"] == "1"
    assert st["Groups"] == ""  # root's groups were dropped too
    assert cgroup_file(pid, "memory", "memory.limit_in_bytes") == str((256 << 20) + GiB)
    assert cgroup_file(pid, "pids", "pids.max") == "512"

    shown = daemon.client.get("conf")["confinement"]
    assert shown["user"] == "corral-qemu" and shown["uid"] == int(st["Uid"].split()[0])
    assert (shown["seccomp"], shown["private_home"]) == ("filter", True)
    assert (shown["memory_limit_bytes"], shown["pids_max"]) == ((256 << 20) + GiB, 512)
    text = daemon.cli("show", "conf", check=True).stdout
    assert "corral-qemu" in text and "seccomp filter" in text, text

    # its view of the home: only what VMs need, never the store or the daemon's socket
    seen = set(os.listdir(f"/proc/{pid}/root{daemon.home}"))
    assert seen <= {"vms", "disks", "images"} and "vms" in seen, seen
    assert "corral.db" in os.listdir(daemon.home)

    # a forward given without an address binds the loopback, and works
    assert vm["nics"][0]["hostfwd"] == [f"tcp:127.0.0.1:{port}-:80"]
    assert listening_on(port) == ["127.0.0.1"]
    assert until(lambda: "10.0.2.15" in sh(daemon, "conf", "ip -4 -o addr show")[1])
    serve_http(daemon, "conf")
    assert "hello-from-conf" in http_get("127.0.0.1", port)


def host_address() -> str:
    """One of the host's own addresses other than the loopback."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], check=True,
                         capture_output=True, text=True).stdout
    return out.split()[3].split("/")[0]


def test_a_guest_cannot_reach_the_host_through_user_networking(daemon: Daemon,
                                                               make_vm: Any) -> None:
    """A TCP service on the host (as the daemon's API port would be) is out of reach of a
    guest through 10.0.2.2, and of the host's other addresses too."""
    make_vm("walled")
    assert until(lambda: "10.0.2.15" in sh(daemon, "walled", "ip -4 -o addr show")[1])
    accepted: list[object] = []
    with socket.create_server(("0.0.0.0", 0)) as server:
        server.setblocking(False)
        port = server.getsockname()[1]
        for target in ("10.0.2.2", host_address()):
            _, out = sh(daemon, "walled", f"nc -w 3 {target} {port} </dev/null; echo rc=$?")
            assert "rc=0" not in out and "refused" in out, (target, out)
        with contextlib.suppress(BlockingIOError):
            accepted.append(server.accept())
    assert accepted == [], "the host's service saw a connection from the guest"
    # refused by the daemon's rule for QEMU's user, not by chance
    ruleset = subprocess.run(["nft", "-j", "list", "table", "inet", guard(daemon.home)],
                             check=True, capture_output=True, text=True).stdout
    counters = [e["counter"]["packets"] for item in json.loads(ruleset)["nftables"]
                if "rule" in item for e in item["rule"]["expr"] if "counter" in e]
    assert counters and counters[0] >= 2, ruleset


def guard(home: Path) -> str:
    return f"corral-qemu-{Paths(home).tag}"


def has_table(name: str) -> bool:
    return subprocess.run(["nft", "list", "table", "inet", name],
                          capture_output=True).returncode == 0


def _walk(home: Path) -> list[tuple[str, int, str]]:
    out = []
    for dir, dirs, files in os.walk(home):
        for name in dirs + files:
            path = Path(dir) / name
            st = path.lstat()
            kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
            out.append((str(path.relative_to(home)), stat.S_IMODE(st.st_mode), kind))
    return out


def test_every_file_is_private_after_a_lifecycle(daemon: Daemon, make_vm: Any,
                                                 tmp_path: Path) -> None:
    c = daemon.client
    make_vm("files")
    c.pause("files")
    c.resume("files")
    c.snapshot_create("files", "s1", memory=True)
    c.save("files")
    c.restore("files", wait=True)
    make_vm("files-warm", from_snapshot="files:s1")
    c.stop("files", force=True)
    export = tmp_path / "files.corral"
    assert daemon.cli("export", "files", str(export)).returncode == 0
    assert stat.S_IMODE(export.stat().st_mode) == 0o600
    assert stat.S_IMODE(daemon.home.stat().st_mode) == 0o700
    walked = _walk(daemon.home)
    assert len(walked) > 10, walked
    wrong = [(p, oct(m)) for p, m, kind in walked
             if p != "daemon.log"  # the test's own log of the daemon's output
             and m != (0o700 if kind == "dir" else 0o600)]
    assert wrong == [], wrong
    # what QEMU opens by path is its user's; the rest stays root's
    qemu_uid = pwd.getpwnam("corral-qemu").pw_uid
    owners = {(daemon.home / p).lstat().st_uid for p, _, _ in walked if p.startswith("vms")}
    assert qemu_uid in owners and owners <= {0, qemu_uid}, owners
    assert (daemon.home / "corral.db").stat().st_uid == 0


def test_a_forbidden_system_call_kills_qemu_and_the_vm_is_crashed(
        image_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``migrate exec:`` makes QEMU fork a shell: ``-sandbox spawn=deny`` has the kernel kill
    it with SIGSYS. (QEMU serves one monitor client, the service's own, so the command is
    sent through the engine of an in-process service.)"""
    monkeypatch.setenv("CORRAL_IMAGE_PATH", image_path)
    home = Path(tempfile.mkdtemp(prefix="crl-", dir="/tmp"))
    HOMES.append(home)
    umask = os.umask(0o022)
    try:
        asyncio.run(_forbidden_syscall(home))
    finally:
        os.umask(umask)
        shutil.rmtree(home, ignore_errors=True)


async def _forbidden_syscall(home: Path) -> None:
    from corral.service.manager import Manager

    m = Manager(Paths(home))
    await m.open()
    try:
        await m.vms.create({"name": "sys"}, start=True)
        machine: Any = m.runtime.live["sys"].machine
        with pytest.raises(CorralError):
            await machine.monitor.execute("migrate", {"uri": "exec:true"}, timeout=10)
        deadline = time.monotonic() + 10
        while (vm := await m.vms.get("sys"))["state"] != "crashed":
            assert time.monotonic() < deadline, vm
            await asyncio.sleep(0.05)
        assert "SIGSYS" in vm["exit_reason"] and "seccomp" in vm["exit_reason"], vm
        await m.vms.rm("sys")
    finally:
        await m.close()
    assert_nothing_left(home)  # the host guard too: no QEMU runs on


def test_the_host_guard_is_there_while_a_qemu_runs_and_a_moment_after(image_path: str) -> None:
    """Up before the first QEMU starts; after the last one ends it stays ``engine.guard_linger``
    seconds (a VM started meanwhile pays no ``nft`` run) and then goes."""
    with running_daemon(image_path, CORRAL_GUARD_LINGER="4") as d:
        table = guard(d.home)
        d.client.create("guarded")
        assert not has_table(table)
        d.client.start("guarded")
        assert has_table(table)
        d.client.stop("guarded", force=True)
        assert has_table(table), "lowered at once, not after the linger"
        assert until(lambda: not has_table(table), 4 + 30), "the guard outlived its linger"
