"""Acting inside a real guest through its agent: exec, files both ways, addresses, silence."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.errors import AgentError, InvalidState, Timeout

from .conftest import CORRAL, Daemon


@pytest.fixture(scope="module")
def vm(daemon: Daemon) -> Iterator[str]:
    daemon.client.create("g1", start=True, wait=True)
    yield "g1"
    daemon.client.destroy("g1")


def test_exec_output_and_exit_codes(daemon: Daemon, vm: str) -> None:
    res = daemon.cli("exec", vm, "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert res.returncode == 3
    assert res.stdout == "out\n" and res.stderr == "err\n"
    res = daemon.cli("exec", vm, "--", "uname", "-m")
    assert res.returncode == 0 and res.stdout.strip() == "x86_64"
    out = daemon.client.exec(vm, ["cat"], stdin=b"fed through stdin")
    assert out["stdout"] == b"fed through stdin" and out["exitcode"] == 0
    res = daemon.cli("exec", vm, "--json", "--", "hostname")
    assert json.loads(res.stdout)["stdout"].strip() == vm


def test_exec_of_missing_command_gives_the_guests_error(daemon: Daemon, vm: str) -> None:
    res = daemon.cli("exec", vm, "--", "no-such-command")
    assert res.returncode == 127  # the guest shell's word, as over ssh
    assert "no-such-command" in res.stderr and "not found" in res.stderr
    assert "Traceback" not in res.stderr
    res = daemon.cli("exec", vm, "--json", "--", "no-such-command")  # not streamed: the agent
    assert res.returncode == 7
    assert res.stderr.startswith("corral: error: guest agent of 'g1':")
    assert "no-such-command" in res.stderr and "Traceback" not in res.stderr
    res = daemon.cli("exec", vm)
    assert res.returncode == 2 and "give the command" in res.stderr


def test_exec_streams_output_as_it_comes(daemon: Daemon, vm: str) -> None:
    t0 = time.monotonic()
    proc = subprocess.Popen([CORRAL, "exec", vm, "--", "sh", "-c",
                             "echo first; echo warn >&2; sleep 2; echo second; exit 4"],
                            env=daemon.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    seen_first = time.monotonic() - t0
    rest, err = proc.communicate(timeout=30)
    total = time.monotonic() - t0
    assert first == b"first\n" and rest == b"second\n" and err == b"warn\n"
    assert proc.returncode == 4
    assert total >= 2.0 and seen_first < total - 1.5, (seen_first, total)
    chunks = list(daemon.client.exec_stream(vm, ["sh", "-c", "printf a; sleep 1; printf b"]))
    assert b"".join(c.get("stdout", b"") for c in chunks) == b"ab"
    assert chunks[-1]["exitcode"] == 0


def test_five_mib_binary_round_trip(daemon: Daemon, vm: str, tmp_path: Path) -> None:
    data = os.urandom(5 << 20)
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    res = daemon.cli("cp", str(src), f"{vm}:/tmp/blob.bin", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["sha256"] == hashlib.sha256(data).hexdigest()
    inside = daemon.client.exec(vm, ["sha256sum", "/tmp/blob.bin"])["stdout"].split()[0]
    assert inside.decode() == hashlib.sha256(data).hexdigest()
    back = tmp_path / "back"
    back.mkdir()
    res = daemon.cli("cp", f"{vm}:/tmp/blob.bin", str(back))
    assert res.returncode == 0, res.stderr
    assert (back / "blob.bin").read_bytes() == data
    assert [p.name for p in back.iterdir()] == ["blob.bin"]  # no temporary left behind
    umask = os.umask(0)
    os.umask(umask)  # the mode cp gives a new file (it was 0600), and keeps a replaced one's
    assert stat.S_IMODE((back / "blob.bin").stat().st_mode) == 0o666 & ~umask
    (back / "pw").write_bytes(b"")
    (back / "pw").chmod(0o640)
    assert daemon.cli("cp", f"{vm}:/etc/passwd", str(back / "pw")).returncode == 0
    assert stat.S_IMODE((back / "pw").stat().st_mode) == 0o640
    assert b"root" in (back / "pw").read_bytes()


def test_missing_guest_path_is_a_clear_error(daemon: Daemon, vm: str, tmp_path: Path) -> None:
    res = daemon.cli("cp", f"{vm}:/no/such/file", str(tmp_path / "x"))
    assert res.returncode == 7 and "No such file" in res.stderr
    assert not (tmp_path / "x").exists()
    res = daemon.cli("cp", str(tmp_path / "missing"), f"{vm}:/tmp/x")
    assert res.returncode == 2 and "no file" in res.stderr
    with pytest.raises(AgentError):
        daemon.client.write_file(vm, "/no/such/dir/file", b"x")


def test_addresses_match_user_networking(daemon: Daemon, vm: str) -> None:
    ifaces = daemon.client.addresses(vm)
    eth0 = next(i for i in ifaces if i["name"] == "eth0")
    assert eth0["mac"] == daemon.client.get(vm)["nics"][0]["mac"]
    assert eth0["ipv4"] == ["10.0.2.15"]  # QEMU user networking's DHCP address
    assert daemon.cli("ip", vm).stdout.strip() == "10.0.2.15"


def test_paused_vm_is_refused_and_untouched(daemon: Daemon, vm: str) -> None:
    daemon.client.pause(vm)
    with pytest.raises(InvalidState):
        daemon.client.exec(vm, ["true"])
    daemon.client.resume(vm)
    assert daemon.client.exec(vm, ["true"])["exitcode"] == 0


def test_silent_agent_times_out_and_vm_is_untouched(daemon: Daemon, vm: str) -> None:
    # freeze the agent a moment after this exec has answered: a hung agent in a live guest
    daemon.client.exec(vm, ["sh", "-c", "(sleep 0.3; kill -STOP $(cat /run/qemu-ga.pid)) "
                                        ">/dev/null 2>&1 &"], timeout=5)
    time.sleep(0.6)
    with pytest.raises(Timeout) as info:
        daemon.client.exec(vm, ["true"], timeout=2)
    assert "did not answer" in info.value.message
    assert daemon.client.get(vm)["state"] == "running"
    res = daemon.cli("exec", vm, "--timeout", "1", "--", "true")
    assert res.returncode == 6 and "did not answer" in res.stderr
