"""Start one QEMU process, confined from its first instruction.

QEMU is not started with ``-daemonize`` (its fork would break ``-sandbox spawn=deny``).
Instead the daemon forks a short-lived *intermediate* that sets up what needs root, forks
QEMU's process and exits: QEMU is then an orphan, and since the daemon is a child subreaper
(:func:`corral.engine.qemu.process.become_subreaper`) it becomes the daemon's child, reaped
the moment it ends and watched through a pidfd, exactly as a daemonized QEMU was. It lives in
its own session, so it outlives the daemon; the next daemon adopts it.

The intermediate, as root:

1. gives QEMU a private view of the home (a mount namespace): the home is a small tmpfs
   (mode 0711) in which only the directories QEMU needs (``vms``, ``disks``, ``images``) are
   bind-mounted from the real home, which stays 0700 and never shows QEMU the store or the
   daemon's socket;
2. writes QEMU's pid into the pidfile, before anything else can happen, so a daemon killed
   at any moment after the fork still finds the QEMU it started;

and QEMU's own process, before it execs, joins its memory and pids cgroups and drops to the
unprivileged QEMU user (groups cleared): it is *started* as that user, which is what lets
``-sandbox elevateprivileges=deny`` hold (``-runas`` would need setuid after the filter).
Everything else QEMU needs from root comes as descriptors (monitor sockets, state files).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import socket
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from corral.domain.specs import VMSpec
from corral.engine.qemu.argv import Listeners
from corral.host.tap import open_tap

_CLONE_NEWNS = 0x00020000
_PR_SET_THP_DISABLE = 41
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_BIND, _MS_REC, _MS_PRIVATE = (
    0x2, 0x4, 0x8, 0x1000, 0x4000, 0x40000)


@dataclass(frozen=True)
class Jail:
    """How one QEMU is confined when it starts (all fields off: as the daemon itself)."""

    uid: int | None = None
    gid: int | None = None
    home: Path | None = None  # hidden behind a private view that shows only ``visible``
    visible: tuple[str, ...] = ()
    cgroups: tuple[Path, ...] = field(default_factory=tuple)  # cgroup.procs files to join
    #: no transparent huge pages (TCG: QEMU asks them for its translation buffer and guest
    #: RAM, and an idle guest's scattered pages then cost 2 MiB each)
    no_thp: bool = False


class _Libc:
    """``unshare`` and ``mount`` from the C library, looked up before any fork."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.unshare = libc.unshare
        self.unshare.argtypes = [ctypes.c_int]
        self.mount = libc.mount
        self.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                               ctypes.c_ulong, ctypes.c_char_p]

    def check(self, rc: int, what: str) -> None:
        if rc != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")


_LIBC: _Libc | None = None


def _libc() -> _Libc:
    global _LIBC
    if _LIBC is None:
        _LIBC = _Libc()
    return _LIBC


def _private_view(libc: _Libc, home: Path, visible: Sequence[str]) -> None:
    """In a new mount namespace: the home becomes a tmpfs holding only ``visible``."""
    libc.check(libc.unshare(_CLONE_NEWNS), "unshare")
    libc.check(libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "mount --make-rprivate")
    keep = os.open(home, os.O_PATH | os.O_DIRECTORY)
    target = os.fsencode(home)
    libc.check(libc.mount(b"corral", target, b"tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC,
                          b"mode=0711,size=64k"), f"mount tmpfs on {home}")
    for name in visible:
        os.mkdir(home / name, 0o711)
        libc.check(libc.mount(os.fsencode(f"/proc/self/fd/{keep}/{name}"),
                              os.fsencode(home / name), None, _MS_BIND | _MS_REC, None),
                   f"bind {name}")
    os.close(keep)


def _start(argv: list[str], pass_fds: Sequence[int], log_fd: int, pid_fd: int,
           jail: Jail) -> None:
    libc = _libc() if jail.home is not None else None
    visible = [v for v in jail.visible if jail.home is not None and (jail.home / v).is_dir()]
    prctl = ctypes.CDLL(None, use_errno=True).prctl if jail.no_thp else None

    def intermediate() -> None:
        # runs after fork, before exec; what it says goes to QEMU's log (fd 2)
        try:
            if prctl is not None:  # kept across fork and exec: QEMU's own process has it
                prctl(_PR_SET_THP_DISABLE, 1, 0, 0, 0)
            if libc is not None and jail.home is not None:
                _private_view(libc, jail.home, visible)
            pid = os.fork()
            if pid:
                os.write(pid_fd, f"{pid}\n".encode())
                os._exit(0)
            for procs in jail.cgroups:
                fd = os.open(procs, os.O_WRONLY)
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
            if jail.uid is not None and jail.gid is not None:
                os.setgroups([])
                os.setgid(jail.gid)
                os.setuid(jail.uid)
        except OSError as err:
            os.write(2, f"corral: cannot confine QEMU: {err}\n".encode())
            raise

    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
                            pass_fds=tuple(pass_fds), start_new_session=True,
                            preexec_fn=intermediate)
    proc.wait()


async def spawn(argv: list[str], pass_fds: Sequence[int], log: Path, pidfile: Path,
                jail: Jail) -> int:
    """Start QEMU confined by ``jail``, with the descriptors ``pass_fds`` (same numbers) and
    its output appended to ``log``; its pid (also written to ``pidfile``).

    :raises OSError: when QEMU cannot be executed (FileNotFoundError: not installed).
    :raises subprocess.SubprocessError: when it could not be confined (the reason is in
        ``log``).
    """
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    pid_fd = os.open(pidfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        await asyncio.to_thread(_start, argv, pass_fds, log_fd, pid_fd, jail)
    finally:
        os.close(log_fd)
        os.close(pid_fd)
    return int(pidfile.read_text().strip())


@contextlib.contextmanager
def listening(qmp: Path, console: Path, agent: Path | None) -> Iterator[Listeners]:
    """Listening unix sockets (mode 0600, owned by the daemon) at the monitor, console and
    agent paths, to pass to QEMU; the daemon's copies close when the block ends, after which
    only QEMU holds them (so a QEMU that dies before answering closes them, and a connection
    waiting in one fails instead of hanging)."""
    socks: list[socket.socket] = []

    def listen(path: Path) -> int:
        path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        socks.append(sock)
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(16)
        return sock.fileno()

    try:
        yield Listeners(qmp=listen(qmp), console=listen(console),
                        agent=listen(agent) if agent is not None else None)
    finally:
        for sock in socks:
            sock.close()


@contextlib.contextmanager
def opened_taps(spec: VMSpec) -> Iterator[dict[int, int]]:
    """The taps of ``spec``'s network NICs opened by the daemon (NIC index -> descriptor), to
    pass to QEMU; the daemon's copies close when the block ends.

    :raises CorralError: when a tap cannot be opened.
    """
    fds: dict[int, int] = {}
    try:
        for i, nic in enumerate(spec.nics):
            if nic.mode == "network" and nic.ifname:
                fds[i] = open_tap(nic.ifname)
        yield fds
    finally:
        for fd in fds.values():
            os.close(fd)
