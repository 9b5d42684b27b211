"""Live migration at the engine level: two real QEMUs on this host, the state over loopback
TCP, a local disk copied live over NBD. The service and the cluster build ``corral migrate``
on these calls; here they are proven on their own: the guest keeps counting across the move,
a file written before it is read back after, and a cancelled or broken migration leaves the
guest running on the source."""

from __future__ import annotations

import asyncio
import base64
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.domain.specs import DiskSpec, NicSpec, VMSpec, new_mac
from corral.engine import accel
from corral.engine.driver import MigrationOptions, MigrationProgress
from corral.engine.qemu.driver import QemuDriver, QemuMachine
from corral.errors import MigrationFailed

from .conftest import COUNTER

pytestmark = pytest.mark.integration

DEV = "/dev/vda"
# rewrites 48 MiB of guest RAM over and over, at the lowest priority: the guest agent and the
# counter still get the (emulated, maybe busy) vCPU when they need it
DIRTY = ("nice -n 19 sh -c 'while :; do dd if=/dev/zero of=/tmp/dirty bs=1M count=48 "
         "2>/dev/null; done' >/dev/null 2>&1 &")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def tiny_disk(image_path: str) -> Path:
    for p in image_path.split(":"):
        tiny = Path(p) / "tiny"
        if (tiny / "initrd.lz4").is_file():
            return tiny
    pytest.skip("no tiny image (make image builds it)")


@pytest.fixture
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="corral-mig-") as d:
        yield Path(d)


CMDLINE = ("console=ttyS0 quiet panic=-1 cryptomgr.notests i8042.noaux i8042.nomux "
           "i8042.nopnp i8042.dumbkbd no_timer_check")


def spec_for(tiny: Path, disk: Path | None, bus: str = "virtio") -> VMSpec:
    """The tiny guest (its system in the initramfs), with one data disk on ``bus``."""
    disks = [] if disk is None else [DiskSpec(path=str(disk), format="qcow2", bus=bus)]
    return VMSpec(
        name="mig", image="tiny", cpus=1, memory_bytes=256 << 20,
        kernel=str(tiny / "vmlinux"), initrd=str(tiny / "initrd.lz4"), cmdline=CMDLINE,
        machine="q35", cpu_model="max", disks=disks,
        nics=[NicSpec(mode="user", mac=new_mac())])


def blank(path: Path, size: str = "64M") -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return path


def with_disk(spec: VMSpec, disk: Path) -> VMSpec:
    return spec.model_copy(update={"disks": [spec.disks[0].model_copy(
        update={"path": str(disk)})]})


class Pair:
    """A source QEMU running the guest, and a target QEMU waiting for it."""

    def __init__(self, driver: QemuDriver, work: Path, tiny: Path) -> None:
        self.driver, self.work, self.tiny = driver, work, tiny
        self.machines: list[tuple[QemuMachine, Path]] = []

    async def launch(self, side: str, spec: VMSpec, incoming: bool = False) -> QemuMachine:
        from corral.engine.driver import LaunchOptions

        m = await self.driver.launch(spec, self.work / side, self.work / f"{side}.log",
                                     lambda _e, _d: None,
                                     LaunchOptions(incoming=incoming, hold=incoming))
        m.watch_exit(lambda _status: None)
        self.machines.append((m, self.work / side))
        return m

    async def close(self) -> None:
        for m, run_dir in self.machines:
            if m.alive:
                m.kill()
                await m.wait_exit(5)
            await m.close()
            self.driver.cleanup(run_dir)


async def sh(m: QemuMachine, command: str) -> str:
    pid = await m.guest_exec(["sh", "-c", command])
    for _ in range(400):
        st = await m.guest_exec_status(pid)
        if st.exited:
            assert st.exitcode == 0, (command, st)
            return base64.b64decode(st.stdout).decode()
        await asyncio.sleep(0.025)
    raise AssertionError(f"{command} did not finish")


@pytest.fixture
async def pair(workdir: Path, tiny_disk: Path) -> AsyncIterator[Pair]:
    p = Pair(QemuDriver(accel.detect().name, accel.tsc_khz()), workdir, tiny_disk)
    try:
        yield p
    finally:
        await p.close()


async def test_a_local_disk_guest_moves_while_running(pair: Pair, workdir: Path,
                                                       tiny_disk: Path) -> None:
    spec = spec_for(tiny_disk, blank(workdir / "src.qcow2"))
    source = await pair.launch("src", spec)
    await source.guest_wait_ready(60)
    await sh(source, f"echo moved-with-me | dd of={DEV} conv=fsync 2>/dev/null")
    await sh(source, COUNTER)
    await asyncio.sleep(0.3)
    before = int(await sh(source, "cat /tmp/counter"))

    target = await pair.launch("dst", with_disk(spec, blank(workdir / "dst.qcow2")),
                               incoming=True)
    port, nbd = free_port(), free_port()
    await target.serve_incoming(f"tcp:127.0.0.1:{port}", nbd=f"127.0.0.1:{nbd}",
                                disks=("disk0",))
    seen: list[MigrationProgress] = []
    result = await source.migrate_to(
        f"tcp:127.0.0.1:{port}",
        MigrationOptions(mirror=("disk0",), nbd=f"127.0.0.1:{nbd}", timeout=120),
        seen.append)
    await target.finish_incoming(60)
    assert await source.status() == "postmigrate"
    assert await target.status() == "running"
    assert {p.status for p in seen} >= {"copying disks"} or any(p.disk_total for p in seen)
    assert result.transferred > 1 << 20 and result.total_time > 0
    # the guest carries on where it was: same file, same counting process, no reboot
    await target.guest_reset_channel()
    await target.guest_wait_ready(30)
    assert (await sh(target, f"dd if={DEV} bs=13 count=1 2>/dev/null")) == "moved-with-me"
    after = int(await sh(target, "cat /tmp/counter"))
    assert after >= before
    await asyncio.sleep(0.3)
    assert int(await sh(target, "cat /tmp/counter")) > after
    await source.quit()


async def test_a_broken_link_leaves_the_guest_on_the_source(pair: Pair, workdir: Path,
                                                            tiny_disk: Path) -> None:
    spec = spec_for(tiny_disk, None)
    source = await pair.launch("src", spec)
    await source.guest_wait_ready(60)
    target = await pair.launch("dst", spec, incoming=True)
    port = free_port()
    await target.serve_incoming(f"tcp:127.0.0.1:{port}")

    def cut(p: MigrationProgress) -> None:  # the target dies as soon as RAM starts moving
        if p.status == "active" and target.alive:
            target.kill()

    with pytest.raises(MigrationFailed) as err:
        # a slow link, so the cut surely comes mid-stream
        await source.migrate_to(f"tcp:127.0.0.1:{port}",
                                MigrationOptions(bandwidth=1 << 20, timeout=60), cut)
    assert err.value.phase == "stream"
    assert await source.status() == "running"
    await source.guest_ping(10)


async def test_cancel_leaves_the_guest_running_with_its_disk_untouched(
        pair: Pair, workdir: Path, tiny_disk: Path) -> None:
    spec = spec_for(tiny_disk, blank(workdir / "src.qcow2"))
    source = await pair.launch("src", spec)
    await source.guest_wait_ready(60)
    target = await pair.launch("dst", with_disk(spec, blank(workdir / "dst.qcow2")),
                               incoming=True)
    port, nbd = free_port(), free_port()
    await target.serve_incoming(f"tcp:127.0.0.1:{port}", nbd=f"127.0.0.1:{nbd}",
                                disks=("disk0",))
    readings: list[Any] = []

    def cancel_once(p: MigrationProgress) -> None:
        readings.append(p)
        if len(readings) == 3:
            asyncio.get_running_loop().create_task(source.cancel_migration())

    with pytest.raises(MigrationFailed):
        await source.migrate_to(f"tcp:127.0.0.1:{port}",
                                MigrationOptions(mirror=("disk0",), nbd=f"127.0.0.1:{nbd}",
                                                 bandwidth=1 << 20, timeout=60), cancel_once)
    assert await source.status() == "running"
    await source.guest_ping(10)
    await sh(source, f"echo still-here | dd of={DEV} conv=fsync 2>/dev/null")  # still its own
    assert await source.monitor.execute("query-block-jobs") == []


async def test_a_device_that_cannot_migrate_is_refused_and_the_guest_runs_on(
        pair: Pair, workdir: Path, tiny_disk: Path) -> None:
    # QEMU 7.2's NVMe controller has no migration state: such a VM cannot move live
    spec = spec_for(tiny_disk, blank(workdir / "nvme.qcow2"), bus="nvme")
    source = await pair.launch("src", spec)
    target = await pair.launch("dst", spec, incoming=True)
    port = free_port()
    await target.serve_incoming(f"tcp:127.0.0.1:{port}")
    with pytest.raises(MigrationFailed, match="non-migratable device"):
        await source.migrate_to(f"tcp:127.0.0.1:{port}", MigrationOptions(timeout=30))
    assert await source.status() == "running"


def x509_dir(d: Path) -> Path:
    """A CA and a server and client certificate for 127.0.0.1, in QEMU's file names."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "ca-key.pem", "-out", "ca-cert.pem", "-subj", "/CN=corral-test-ca",
        "-days", "1")
    for side in ("server", "client"):
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{side}-key.pem", "-out", f"{side}.csr", "-subj", f"/CN={side}")
        (d / f"{side}.ext").write_text("subjectAltName=IP:127.0.0.1\n"
                                       f"extendedKeyUsage={side}Auth\n")
        run("x509", "-req", "-in", f"{side}.csr", "-CA", "ca-cert.pem", "-CAkey",
            "ca-key.pem", "-CAcreateserial", "-out", f"{side}-cert.pem", "-days", "1",
            "-extfile", f"{side}.ext")
    return d


async def test_an_encrypted_migration_with_post_copy(pair: Pair, workdir: Path,
                                                     tiny_disk: Path) -> None:
    creds = x509_dir(workdir)
    spec = spec_for(tiny_disk, None)
    source = await pair.launch("src", spec)
    await source.guest_wait_ready(60)
    await sh(source, COUNTER)
    await sh(source, DIRTY)
    target = await pair.launch("dst", spec, incoming=True)
    port = free_port()
    await target.serve_incoming(f"tcp:127.0.0.1:{port}", postcopy=True, tls=creds)
    # a slow link, so that the first pass ends while much is still dirty
    result = await source.migrate_to(
        f"tcp:127.0.0.1:{port}",
        MigrationOptions(postcopy=True, tls=creds, bandwidth=32 << 20, timeout=120))
    assert result.postcopy  # the guest dirtied faster than the link: it finished post-copy
    await target.finish_incoming(60)
    assert await target.status() == "running"
    await target.guest_reset_channel()
    await target.guest_wait_ready(30)
    first = int(await sh(target, "cat /tmp/counter"))
    await asyncio.sleep(0.3)
    assert int(await sh(target, "cat /tmp/counter")) > first
    assert result.transferred > 0


async def test_a_migration_that_cannot_converge_stops_at_its_limit(
        pair: Pair, workdir: Path, tiny_disk: Path) -> None:
    spec = spec_for(tiny_disk, None)
    source = await pair.launch("src", spec)
    await source.guest_wait_ready(60)
    await sh(source, DIRTY)
    target = await pair.launch("dst", spec, incoming=True)
    port = free_port()
    await target.serve_incoming(f"tcp:127.0.0.1:{port}")
    with pytest.raises(MigrationFailed, match="did not converge") as err:
        await source.migrate_to(f"tcp:127.0.0.1:{port}", MigrationOptions(
            auto_converge=False, bandwidth=4 << 20, max_downtime=0.01, timeout=3))
    assert err.value.phase == "converge"
    assert await source.status() == "running"
