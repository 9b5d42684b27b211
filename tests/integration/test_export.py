"""Export a VM to one file and import it into a fresh data directory; damaged files refused."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import COUNTER, HOMES, Daemon, assert_nothing_left


@pytest.fixture
def second(daemon: Daemon) -> Iterator[Daemon]:
    """Another daemon with its own, empty CORRAL_HOME (as on another machine)."""
    home = Path(tempfile.mkdtemp(prefix="crl-", dir="/tmp"))
    HOMES.append(home)
    other = Daemon(home, daemon.env["CORRAL_IMAGE_PATH"])
    other.start()
    yield other
    with contextlib.suppress(Exception):
        for vm in other.client.list():
            other.client.destroy(vm["name"])
    other.stop()
    assert_nothing_left(home)
    shutil.rmtree(home, ignore_errors=True)


def test_export_saved_vm_and_import_elsewhere(daemon: Daemon, second: Daemon,
                                              tmp_path: Path) -> None:
    c = daemon.client
    c.create("mover", disks=[{"size": "32M"}], start=True, wait=True)
    c.exec("mover", ["sh", "-c", COUNTER])
    c.exec("mover", ["sh", "-c", "printf MOVE-1 | dd of=/dev/vda bs=512 seek=9 "
                                 "conv=notrunc,fsync 2>/dev/null"])
    time.sleep(0.3)
    res = daemon.cli("export", "mover", str(tmp_path / "x.corral"))
    assert res.returncode == 5 and "(needs defined, stopped, saved" in res.stderr  # live
    before = int(c.exec("mover", ["cat", "/tmp/counter"])["stdout"])
    c.save("mover")
    out = daemon.cli("export", "mover", str(tmp_path / "mover.corral"))
    assert out.returncode == 0, out.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["mover.corral"]

    res = second.cli("import", str(tmp_path / "mover.corral"), "--json")
    assert res.returncode == 0, res.stderr
    vm = second.client.get("mover")
    assert vm["state"] == "saved"
    assert vm["nics"][0]["mac"] == c.get("mover")["nics"][0]["mac"]  # a move keeps its MAC
    vm = second.client.start("mover", wait=True)
    assert vm["state"] == "running"
    after = int(second.client.exec("mover", ["cat", "/tmp/counter"])["stdout"])
    assert before <= after < before + 30, (before, after)
    disk = second.client.exec("mover", ["sh", "-c", "dd if=/dev/vda bs=512 skip=9 count=1 "
                                                    "2>/dev/null | head -c 6"])["stdout"]
    assert disk == b"MOVE-1"

    # import the same file again under another name: a copy with its own MAC
    copy = second.client.import_vm(str(tmp_path / "mover.corral"), "mover2")
    assert copy["nics"][0]["mac"] != vm["nics"][0]["mac"]
    assert second.cli("import", str(tmp_path / "mover.corral")).returncode == 4  # name taken
    c.destroy("mover")


def test_damaged_exports_are_refused_whole(daemon: Daemon, second: Daemon,
                                           tmp_path: Path) -> None:
    c = daemon.client
    c.create("src", disks=[{"size": "16M"}])
    good = tmp_path / "good.corral"
    c.export("src", str(good))
    data = good.read_bytes()
    bad = {
        "truncated.corral": data[: len(data) // 2],
        "corrupt.corral": data[:4000] + bytes(b ^ 0xFF for b in data[4000:4100]) + data[4100:],
        "foreign.corral": b"PK\x03\x04 this is a zip, not an export" * 10,
        "empty.corral": b"",
    }
    for name, content in bad.items():
        (tmp_path / name).write_bytes(content)
        res = second.cli("import", str(tmp_path / name))
        assert res.returncode == 2, (name, res.stderr)
        assert "is not a Corral export" in res.stderr and res.stderr.count("\n") == 1
        assert "the uploaded file" in res.stderr and str(second.home) not in res.stderr
        assert second.client.list() == []
        assert list((second.home / "vms").iterdir()) == [] if (second.home / "vms").exists() \
            else True
    assert second.client.import_vm(str(good))["state"] == "stopped"
    c.destroy("src")


def test_export_to_a_full_disk_leaves_nothing(daemon: Daemon) -> None:
    c = daemon.client
    c.create("big", disks=[{"size": "64M"}], start=True, wait=True)
    c.exec("big", ["sh", "-c", "dd if=/dev/urandom of=/dev/vda bs=1M count=8 conv=fsync "
                               "2>/dev/null"])
    c.stop("big")
    small = Path(tempfile.mkdtemp(prefix="corral-full-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", str(small)], check=True)
    try:
        res = daemon.cli("export", "big", str(small / "big.corral"))
        assert res.returncode == 1 and "cannot write the export" in res.stderr
        assert list(small.iterdir()) == []
        assert c.get("big")["state"] == "stopped"
    finally:
        subprocess.run(["umount", str(small)], check=True)
        small.rmdir()
    c.destroy("big")
