"""QEMU's confinement, the parts that need no guest: the files handed over to QEMU's user
(with the backing chain of a qcow2), the daemon's decision and what it says, the exit of a
seccomp kill, and the spawner (a real process, started as another user)."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from corral.config import Paths
from corral.engine.driver import ExitStatus
from corral.engine.qemu.confine import Confinement
from corral.engine.qemu.driver import QemuDriver
from corral.engine.qemu.process import reap, start_time
from corral.engine.qemu.spawn import Jail, spawn
from corral.host import qemu_user
from corral.host.qemu_user import QemuUser
from corral.service import confinement

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="changes owners (needs root)")
NOBODY = QemuUser("nobody", 65534, 65534)


def qcow2(path: Path, backing: Path | None = None) -> Path:
    argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing is not None:
        argv += ["-b", str(backing), "-F", "qcow2"]
    subprocess.run([*argv, str(path), "16M"], check=True)
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_the_backing_chain_of_a_qcow2_is_read_from_its_header(tmp_path: Path) -> None:
    base = qcow2(tmp_path / "base.qcow2")
    mid = qcow2(tmp_path / "mid.qcow2", base)
    top = qcow2(tmp_path / "top.qcow2", mid)
    assert qemu_user.backing_file(top) == mid
    assert qemu_user.backing_file(mid) == base
    assert qemu_user.backing_file(base) is None
    (tmp_path / "raw.img").write_bytes(b"\0" * 4096)
    assert qemu_user.backing_file(tmp_path / "raw.img") is None
    assert qemu_user.backing_file(tmp_path / "missing") is None


@root_only
def test_hand_over_gives_qemu_its_files_and_only_reading_of_the_bases(tmp_path: Path) -> None:
    home = tmp_path / "home"
    images, vm = home / "images" / "tiny", home / "vms" / "web"
    images.mkdir(parents=True, mode=0o700)
    vm.mkdir(parents=True, mode=0o700)
    base = qcow2(images / "disk.qcow2")
    disk = qcow2(vm / "root.qcow2", base)
    os.chmod(home, 0o700)
    qemu_user.hand_over([disk, vm / "serial.log", "/etc/hostname"], home, NOBODY,
                        shared=[home / "images"])
    for path in (disk, vm, home / "vms"):
        assert path.stat().st_uid == NOBODY.uid, path
    assert (mode(disk), mode(vm), mode(home / "vms")) == (0o600, 0o700, 0o700)
    assert not (vm / "serial.log").exists()  # QEMU makes it, in a directory it owns
    assert (base.stat().st_uid, base.stat().st_gid, mode(base)) == (0, NOBODY.gid, 0o640)
    assert (mode(images), mode(home / "images")) == (0o750, 0o750)
    assert (home.stat().st_uid, mode(home)) == (0, 0o700)  # the home itself stays root's
    assert Path("/etc/hostname").stat().st_uid == 0  # nothing outside the home is touched


def test_a_seccomp_kill_is_named() -> None:
    assert "bad system call: seccomp" in ExitStatus(-31).describe()
    assert ExitStatus(-9).describe() == "killed by SIGKILL"


def test_without_a_user_of_its_own_the_daemon_says_why(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_QEMU_USER", "root")
    monkeypatch.setenv("CORRAL_SANDBOX", "0")
    conf = confinement.decide(Paths(tmp_path / "home"), "tcg")
    assert conf.user is None and conf.home is None and not conf.sandbox
    assert "engine.qemu_user" in conf.off["user"] and "engine.sandbox" in conf.off["seccomp"]
    assert set(conf.off) >= {"user", "seccomp", "private_home", "host_guard"}
    told = conf.describe()
    assert (told["user"], told["seccomp"], told["private_home"]) == (None, False, False)


def test_a_bad_setting_is_one_clear_error(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from corral.errors import CorralError
    from corral.host import cgroups

    if cgroups.limits_unavailable():
        pytest.skip(f"no cgroup limits here ({cgroups.limits_unavailable()})")
    monkeypatch.setenv("CORRAL_QEMU_PIDS_MAX", "lots")
    monkeypatch.setenv("CORRAL_QEMU_USER", "root")
    with pytest.raises(CorralError, match="CORRAL_QEMU_PIDS_MAX"):
        confinement.decide(Paths(tmp_path / "home"), "tcg")


@root_only
def test_the_spawner_starts_a_process_as_the_user_orphaned_with_its_pidfile(
        tmp_path: Path) -> None:
    """The process runs as the jail's user with no groups, gets the descriptor it was
    given, and its pid is in the pidfile before ``spawn`` returns."""
    os.chmod(tmp_path, 0o755)
    r, w = os.pipe()
    os.set_inheritable(w, False)
    script = f"import os; os.write({w}, f'{{os.getuid()}} {{os.getgroups()}}'.encode())"
    jail = Jail(uid=NOBODY.uid, gid=NOBODY.gid)
    pid = asyncio.run(spawn(["python3", "-c", script], [w], tmp_path / "log",
                            tmp_path / "pid", jail))
    os.close(w)
    assert int((tmp_path / "pid").read_text()) == pid
    out = os.read(r, 4096).decode()
    os.close(r)
    deadline = time.monotonic() + 5
    while start_time(pid) is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    # orphaned at once: ours only when this process is a subreaper (the daemon is; a test
    # that opened a Manager made this one too), and then it ended well
    assert reap(pid) in (None, 0)
    uid, rest = out.split(" ", 1)
    assert uid == str(NOBODY.uid) and rest.startswith("[]"), out
    assert mode(tmp_path / "log") == 0o600


def test_the_facts_of_a_running_qemu_are_read_once_and_dropped_when_it_ends(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from corral.engine.qemu import confine

    reads: list[int] = []
    real = confine.facts

    def counted(pid: int) -> dict[str, object] | None:
        reads.append(pid)
        return real(pid)

    monkeypatch.setattr(confine, "facts", counted)
    known = confine.KnownFacts()
    me = os.getpid()
    first = known.of(me, known=True)
    assert first is not None and first["uid"] == os.getuid()
    assert known.of(me, known=True) == first and reads == [me]  # kept: not read again
    assert known.of(me, known=False) == first and reads == [me, me]  # not ours: read afresh
    known.keep([])  # it ended: a new process with its pid is read again
    known.of(me, known=True)
    assert reads == [me, me, me]
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert known.of(gone.pid, known=True) is None  # a process that is gone has no facts


class _Guard(Confinement):
    """A confinement whose host guard is a list of what was done to it (no nft)."""

    def __init__(self, linger: float) -> None:
        super().__init__(host_guard="corral-qemu-test", guard_linger=linger)
        self.calls: list[str] = []

    def raise_guard(self) -> None:
        self.calls.append("up")
        self.guard_up = True

    def lower_guard(self) -> None:
        self.calls.append("down")
        self.guard_up = False


async def test_the_host_guard_lingers_after_the_last_qemu_unless_another_starts() -> None:
    conf = _Guard(linger=0.2)
    driver = QemuDriver("tcg", confinement=conf)
    conf.raise_guard()
    driver.settle_guard()  # the last QEMU ended: the guard stays for the linger
    assert conf.calls == ["up"]
    driver.pids.add(os.getpid())  # one starts meanwhile (a live pid stands for it)
    driver.settle_guard()
    await asyncio.sleep(0.5)
    assert conf.calls == ["up"], "lowered under a running QEMU"
    driver.pids.clear()
    driver.settle_guard()
    for _ in range(250):
        if conf.calls[-1] == "down":
            break
        await asyncio.sleep(0.02)
    assert conf.calls == ["up", "down"]
    driver.settle_guard()  # a guard this daemon did not raise (a killed one's): at once
    assert conf.calls == ["up", "down", "down"]
    conf.raise_guard()
    driver.settle_guard()
    driver.settle_guard(at_once=True)  # the daemon closes: now, and the pending one is gone
    await asyncio.sleep(0.4)
    assert conf.calls == ["up", "down", "down", "up", "down"]


def test_without_a_loop_or_a_linger_the_host_guard_goes_at_once() -> None:
    for conf in (_Guard(linger=30.0), _Guard(linger=0.0)):
        driver = QemuDriver("tcg", confinement=conf)
        conf.raise_guard()
        driver.settle_guard()
        assert conf.calls == ["up", "down"]


@root_only
def test_a_handed_out_clones_groups_follow_it_or_go_with_it() -> None:
    """A renamed VM's cgroups take its new name, over an empty leftover of that name (a
    cgroup file system will not rename onto it); a group that cannot move is returned, for
    removal with the VM, and the scheduler removes it at release."""
    from corral.host import cgroups

    if cgroups.limits_unavailable():
        pytest.skip(f"no cgroup limits here ({cgroups.limits_unavailable()})")
    tag = f"t{os.getpid():x}"
    groups = [g for g in [cgroups.group_path(tag, "old")] +
              [cgroups.limit_group(tag, "old", c) for c in cgroups.LIMITS] if g is not None]
    leftover = cgroups.limit_group(tag, "new", "memory")
    busy = cgroups.limit_group(tag, "busy", "pids")
    assert leftover is not None and busy is not None
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        for group in [*groups, leftover, busy]:
            group.mkdir(parents=True)
        assert cgroups.rename(tag, "old", "new") == []
        assert not any(g.exists() for g in groups)
        moved = [g.with_name(g.name.replace("-old", "-new")) for g in groups]
        assert all(g.is_dir() for g in moved)
        # a group of the new name with a process in it cannot go: the old one stays
        (busy / "cgroup.procs").write_text(str(sleeper.pid))
        stayed = cgroups.rename(tag, "new", "busy")
        pids = cgroups.limit_group(tag, "new", "pids")
        assert stayed == [pids] and pids is not None and pids.is_dir()
    finally:
        sleeper.kill()
        sleeper.wait()
        for group in [*groups, *(g.with_name(g.name.replace("-old", "-new")) for g in groups),
                      *(g.with_name(g.name.replace("-old", "-busy")) for g in groups), busy]:
            cgroups.remove_group(group)
    assert not any(g.exists() for g in [*groups, busy])
