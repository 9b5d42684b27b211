"""The fake engine on its own: it must behave like QEMU where the service can tell."""

from __future__ import annotations

import asyncio
import base64
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

from corral.domain.specs import DiskSpec, NicSpec, VMSpec
from corral.engine.driver import ExitStatus, LaunchOptions, RamFile
from corral.engine.fake import FakeDriver, FakeMachine
from corral.errors import AgentError, CorralError, LaunchFailed, MonitorError, Timeout

MAC = "52:54:00:12:34:56"


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.exits: list[ExitStatus] = []

    def on_event(self, event: str, data: dict[str, Any]) -> None:
        self.events.append((event, data))

    def names(self) -> list[str]:
        return [e for e, _ in self.events]


def make_spec(tmp_path: Path, name: str = "f1", **extra: Any) -> VMSpec:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\x7fELF")
    vmstate = tmp_path / f"{name}-vmstate.qcow2"
    vmstate.write_bytes(b"QFI\xfb")
    fields: dict[str, Any] = dict(
        name=name, image=None, cpus=1, memory_bytes=128 << 20, kernel=str(kernel),
        initrd=None, cmdline="console=ttyS0", machine="q35", cpu_model="max", disks=[],
        nics=[NicSpec(mac=MAC)], vmstate=str(vmstate))
    fields.update(extra)
    return VMSpec(**fields)


async def start(tmp_path: Path, driver: FakeDriver | None = None,
                opts: LaunchOptions | None = None, name: str = "f1",
                **extra: Any) -> tuple[FakeMachine, Recorder]:
    rec = Recorder()
    machine = await (driver or FakeDriver()).launch(
        make_spec(tmp_path, name, **extra), tmp_path / "run" / name, tmp_path / f"{name}.log",
        rec.on_event, opts)
    machine.watch_exit(rec.exits.append)
    return machine, rec


async def turn() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_boots_running_and_the_agent_answers_after_the_boot_delay(tmp_path: Path
                                                                         ) -> None:
    machine, _ = await start(tmp_path, FakeDriver(boot_delay=0.05))
    assert await machine.status() == "running" and machine.alive
    with pytest.raises(Timeout):
        await machine.guest_wait_ready(0.01)
    await machine.guest_wait_ready(1)
    run = tmp_path / "run" / "f1"
    assert (run / "qemu.pid").read_text().strip() == str(machine.pid)
    assert "f1 started" in (tmp_path / "f1.log").read_text()


async def test_pause_and_cont_report_events_from_the_loop_not_inside_the_call(
        tmp_path: Path) -> None:
    machine, rec = await start(tmp_path)
    await machine.pause()
    assert rec.events == [] and await machine.status() == "paused"
    await turn()
    assert rec.names() == ["STOP"]
    await machine.pause()  # stopping a stopped guest says nothing
    await machine.cont()
    await machine.cont()
    await turn()
    assert rec.names() == ["STOP", "RESUME"] and await machine.status() == "running"


async def test_hold_stops_before_the_first_instruction(tmp_path: Path) -> None:
    machine, rec = await start(tmp_path, opts=LaunchOptions(hold=True))
    assert await machine.status() == "prelaunch"
    with pytest.raises(Timeout):
        await machine.guest_ping(0.03)
    await machine.cont()
    await machine.guest_wait_ready(1)
    await turn()
    assert rec.names() == ["RESUME"]


async def test_quit_reports_shutdown_then_one_exit(tmp_path: Path) -> None:
    machine, rec = await start(tmp_path)
    machine.watch_exit(rec.exits.append)
    await machine.quit()
    assert await machine.wait_exit(1)
    await turn()
    assert rec.names() == ["SHUTDOWN"] and rec.events[0][1]["guest"] is False
    assert rec.exits == [ExitStatus(0)] and not machine.alive
    with pytest.raises(MonitorError) as err:
        await machine.status()
    assert err.value.error_class == "Disconnected"


async def test_powerdown_of_a_paused_guest_waits_until_it_runs(tmp_path: Path) -> None:
    machine, rec = await start(tmp_path)
    await machine.pause()
    await machine.powerdown()
    assert not await machine.wait_exit(0.02)
    await machine.cont()
    assert await machine.wait_exit(1)
    await turn()
    assert rec.names() == ["STOP", "RESUME", "SHUTDOWN"]
    assert rec.events[-1][1] == {"guest": True, "reason": "guest-shutdown"}
    assert rec.exits == [ExitStatus(0)]


async def test_a_guest_ignoring_acpi_keeps_running(tmp_path: Path) -> None:
    machine, _ = await start(tmp_path)
    machine.hang("acpi")
    await machine.powerdown()
    assert not await machine.wait_exit(0.02)
    machine.kill()
    assert await machine.wait_exit(1) and machine.exit == ExitStatus(-9)


async def test_agent_shutdown_and_reboot(tmp_path: Path) -> None:
    machine, rec = await start(tmp_path)
    await machine.guest_wait_ready(1)
    await machine.guest_shutdown(reboot=True)
    await turn()
    assert rec.names() == ["RESET"] and rec.events[0][1]["guest"] is True
    await machine.guest_wait_ready(1)  # up again after the boot delay
    await machine.guest_shutdown()
    assert await machine.wait_exit(1)
    await turn()
    assert rec.names() == ["RESET", "SHUTDOWN"] and rec.events[1][1]["guest"] is True
    assert rec.exits == [ExitStatus(0)]


async def test_reset_kill_crash_and_panic(tmp_path: Path) -> None:
    machine, rec = await start(tmp_path)
    await machine.reset()
    await turn()
    assert rec.events == [("RESET", {"guest": False, "reason": "host-qmp-system-reset"})]
    machine.crash()
    assert not machine.alive
    await turn()
    assert rec.exits == [ExitStatus(-9)]

    panicking, prec = await start(tmp_path, name="f2")
    panicking.panic()
    assert await panicking.wait_exit(1)
    await turn()
    assert prec.names() == ["GUEST_PANICKED", "SHUTDOWN"]
    assert prec.events[1][1]["reason"] == "guest-panic"


async def test_save_state_writes_a_private_file_and_restores_the_run_state(tmp_path: Path
                                                                           ) -> None:
    driver = FakeDriver()
    machine, _rec = await start(tmp_path, driver)
    await machine.guest_wait_ready(1)
    handle = await machine.guest_open("/root/note", "w")
    await machine.guest_write(handle, b"kept in RAM")
    await machine.guest_close(handle)
    await machine.pause()
    target = tmp_path / "saved.state"
    size = await machine.save_state(target)
    assert size == target.stat().st_size and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []
    assert await machine.status() == "postmigrate"
    await machine.quit()
    assert await machine.wait_exit(1)

    back, _brec = await start(tmp_path, driver, LaunchOptions(incoming=True))
    assert await back.status() == "inmigrate"
    await back.load_state(target)
    assert await back.status() == "paused"  # saved paused: comes back paused
    await back.cont()
    await back.guest_wait_ready(1)
    handle = await back.guest_open("/root/note", "r")
    assert await back.guest_read(handle, 100) == (b"kept in RAM", True)


async def test_a_damaged_state_is_refused_and_qemu_exits(tmp_path: Path) -> None:
    damaged = tmp_path / "bad.state"
    damaged.write_bytes(b"\x00garbage")
    machine, _rec = await start(tmp_path, opts=LaunchOptions(incoming=True))
    with pytest.raises(MonitorError) as err:
        await machine.load_state(damaged)
    assert err.value.error_class == "MigrationFailed"
    assert await machine.wait_exit(1) and machine.exit == ExitStatus(1)
    ready, _ = await start(tmp_path, name="f2")
    with pytest.raises(MonitorError):
        await ready.load_state(damaged)  # not launched incoming


async def test_snapshots_by_tag_and_a_copied_state_file_carries_them(tmp_path: Path) -> None:
    machine, rec = await start(tmp_path)
    await machine.guest_wait_ready(1)
    machine.guest.write("/root/a", b"before")
    await machine.snapshot_save("s1", "vmstate", ["vmstate"])
    await turn()
    assert rec.names() == ["STOP", "RESUME"]  # QEMU stops the guest for the save
    with pytest.raises(CorralError, match="already exists"):
        await machine.snapshot_save("s1", "vmstate", ["vmstate"])
    machine.guest.write("/root/a", b"after")
    await machine.snapshot_load("s1", "vmstate", ["vmstate"])
    assert bytes(machine.guest.files["/root/a"]) == b"before"
    assert await machine.status() == "running"
    with pytest.raises(CorralError, match="does not exist"):
        await machine.snapshot_load("nope", "vmstate", ["vmstate"])
    copy = tmp_path / "copy.qcow2"
    shutil.copyfile(machine.spec.vmstate or "", copy)
    other, _ = await start(tmp_path, name="f2", opts=LaunchOptions(hold=True))
    other.spec.vmstate = str(copy)
    await other.snapshot_load("s1", "vmstate", ["vmstate"])
    assert bytes(other.guest.files["/root/a"]) == b"before"
    await machine.snapshot_delete("s1", ["vmstate"])
    await machine.snapshot_delete("s1", ["vmstate"])  # QEMU skips a tag a node lacks
    with pytest.raises(CorralError, match="does not exist"):
        await machine.snapshot_load("s1", "vmstate", ["vmstate"])


async def test_warm_template_ram_file_moves_from_shared_to_private(tmp_path: Path) -> None:
    ram = tmp_path / "ram"
    helper, _ = await start(tmp_path, opts=LaunchOptions(hold=True, ram=RamFile(ram, True)))
    helper.guest.up = True
    helper.guest.write("/root/t", b"template")
    await helper.save_state(tmp_path / "dev.state", ignore_shared=True)
    await helper.quit()
    clone, _crec = await start(tmp_path, name="f2",
                              opts=LaunchOptions(incoming=True, ram=RamFile(ram, False)))
    await clone.load_state(tmp_path / "dev.state", ignore_shared=True)
    assert await clone.status() == "prelaunch"  # as the template was
    await clone.cont()
    await clone.guest_wait_ready(0.001)  # already booted: answers at once
    assert bytes(clone.guest.files["/root/t"]) == b"template"


async def test_disks_and_nics_hotplug(tmp_path: Path) -> None:
    disk = tmp_path / "d.qcow2"
    disk.write_bytes(b"QFI\xfb")
    machine, rec = await start(tmp_path)
    await machine.guest_wait_ready(1)
    spec = DiskSpec(path=str(disk), format="qcow2")
    await machine.add_disk(spec, "d1")
    with pytest.raises(MonitorError, match="Duplicate"):
        await machine.add_disk(spec, "d1")
    await machine.set_io_limits("d1", 100, 0, True)
    assert await machine.block_stats() == {"d1": dict.fromkeys(
        ("rd_bytes", "wr_bytes", "rd_operations", "wr_operations"), 0)}
    await machine.remove_disk("d1", 1)
    assert rec.names() == ["DEVICE_DELETED"] and "d1" not in machine.disks
    with pytest.raises(MonitorError, match="not found"):
        await machine.remove_disk("d1", 1)
    nic = NicSpec(mac="52:54:00:00:00:02")
    await machine.add_nic(nic, 1)
    assert [i.mac for i in await machine.guest_interfaces()] == [
        "00:00:00:00:00:00", MAC, "52:54:00:00:00:02"]
    await machine.pause()  # a paused guest cannot release a device
    with pytest.raises(Timeout):
        await machine.remove_nic(nic, 1, 0.02)


async def test_guest_exec_runs_the_little_shell(tmp_path: Path) -> None:
    machine, _ = await start(tmp_path)
    await machine.guest_wait_ready(1)

    async def run(argv: list[str], stdin: bytes | None = None) -> tuple[int | None, bytes,
                                                                           bytes]:
        pid = await machine.guest_exec(argv, stdin=stdin)
        status = await machine.guest_exec_status(pid)
        assert status.exited
        return (status.exitcode, base64.b64decode(status.stdout),
                base64.b64decode(status.stderr))

    assert await run(["true"]) == (0, b"", b"")
    assert await run(["false"]) == (1, b"", b"")
    assert await run(["echo", "a", "b"]) == (0, b"a b\n", b"")
    assert await run(["cat"], stdin=b"in") == (0, b"in", b"")
    assert await run(["hostname"]) == (0, b"f1\n", b"")
    assert (await run(["cat", "/nope"]))[0] == 1
    assert await run(["sh", "-c", "echo x && false || echo y; exit 3"]) == (3, b"x\ny\n", b"")
    assert await run(["sh", "-c", 'exec "$@" >"$0.out" 2>"$0.err"', "/tmp/p", "sh", "-c",
                      "echo out; nosuch"]) == (127, b"", b"")
    assert bytes(machine.guest.files["/tmp/p.out"]) == b"out\n"
    assert bytes(machine.guest.files["/tmp/p.err"]) == b"sh: nosuch: not found\n"
    with pytest.raises(AgentError, match="Failed to execute"):
        await machine.guest_exec(["nosuch"])
    pid = await machine.guest_exec(["sleep", "0.05"])
    assert not (await machine.guest_exec_status(pid)).exited
    await asyncio.sleep(0.06)
    assert (await machine.guest_exec_status(pid)).exitcode == 0


async def test_guest_files_through_handles(tmp_path: Path) -> None:
    machine, _ = await start(tmp_path)
    await machine.guest_wait_ready(1)
    h = await machine.guest_open("/tmp/f", "wb")
    await machine.guest_write(h, b"hello world")
    await machine.guest_flush(h)
    await machine.guest_close(h)
    h = await machine.guest_open("/tmp/f", "r")
    assert await machine.guest_read(h, 5) == (b"hello", False)
    await machine.guest_seek(h, 1, "cur")
    assert await machine.guest_read(h, 100) == (b"world", True)
    await machine.guest_seek(h, 0, "set")
    assert await machine.guest_read(h, 11) == (b"hello world", False)
    assert await machine.guest_read(h, 11) == (b"", True)
    with pytest.raises(AgentError, match="No such file"):
        await machine.guest_open("/tmp/missing", "r")
    with pytest.raises(AgentError, match="No such file"):
        await machine.guest_open("/no/dir/f", "w")


async def test_injected_failures_hangs_and_launch_errors(tmp_path: Path) -> None:
    driver = FakeDriver()
    driver.fail_next("launch", LaunchFailed(["qemu"], 1, "boom"))
    with pytest.raises(LaunchFailed, match="boom"):
        await start(tmp_path, driver)
    with pytest.raises(ValueError):
        driver.fail_next("no_such_call", CorralError("x"))
    machine, _ = await start(tmp_path, driver)
    machine.fail_next("pause", MonitorError("stop", "GenericError", "no"))
    with pytest.raises(MonitorError):
        await machine.pause()
    assert await machine.status() == "running"
    machine.hang("guest", seconds=0.01)
    with pytest.raises(Timeout):
        await machine.guest_ping(5)
    machine.unhang("guest")
    await machine.guest_ping(1)
    machine.hang("monitor", seconds=0.01)
    with pytest.raises(Timeout):
        await machine.status()
    with pytest.raises(LaunchFailed, match="kernel"):
        await start(tmp_path, driver, name="f3", kernel=str(tmp_path / "missing"))
    with pytest.raises(LaunchFailed, match="already runs"):
        await start(tmp_path, driver)


async def test_a_new_driver_adopts_a_live_machine_and_not_a_dead_one(tmp_path: Path) -> None:
    machine, _ = await start(tmp_path)
    machine.unwatch()
    await machine.close()
    run = tmp_path / "run" / "f1"
    later = Recorder()
    adopted = await FakeDriver().adopt(machine.spec, run, None, None, later.on_event)
    assert adopted is machine
    await adopted.pause()
    await turn()
    assert later.names() == ["STOP"]
    adopted.crash()
    assert await FakeDriver().adopt(machine.spec, run, None, None, later.on_event) is None
    FakeDriver().cleanup(run)
    assert not run.exists()


async def test_live_migration_moves_the_guest_and_a_failure_keeps_it_on_the_source(
        tmp_path: Path) -> None:
    from corral.engine.driver import MigrationOptions
    from corral.errors import MigrationFailed

    driver = FakeDriver()
    source, _ = await start(tmp_path, driver)
    await source.guest_wait_ready(1)
    handle = await source.guest_open("/root/note", "w")
    await source.guest_write(handle, b"travels")
    await source.guest_close(handle)
    # nobody listens yet: refused, the guest runs on
    with pytest.raises(MigrationFailed) as err:
        await source.migrate_to("tcp:10.0.0.2:4444", MigrationOptions())
    assert err.value.phase == "stream" and await source.status() == "running"

    (tmp_path / "t").mkdir()
    target, _ = await start(tmp_path / "t", driver, LaunchOptions(incoming=True, hold=True))
    await target.serve_incoming("tcp:10.0.0.2:4444")
    seen: list[str] = []
    result = await source.migrate_to("tcp:10.0.0.2:4444", MigrationOptions(),
                                     lambda p: seen.append(p.status))
    assert seen[-1] == "completed" and result.transferred > 0
    assert await source.status() == "postmigrate"
    await target.finish_incoming(1)
    assert await target.status() == "running"
    handle = await target.guest_open("/root/note", "r")
    assert await target.guest_read(handle, 100) == (b"travels", True)
