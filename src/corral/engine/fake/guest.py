"""The guest inside a :class:`~corral.engine.fake.FakeMachine`: a tiny in-memory system that
its guest agent acts on.

What lives in the guest's RAM (and so moves with a saved state, a memory snapshot or a
warm-start template): its files, its hostname, its NICs' MACs and whether it has booted.
Processes run at once (the programs are in :mod:`.shell`); ``sleep N`` only delays the
moment they are seen to exit. Files survive a reboot, as on a disk root.
"""

from __future__ import annotations

import base64
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from corral.engine.fake.shell import COMMANDS, Run
from corral.errors import AgentError

HOSTNAME = "/proc/sys/kernel/hostname"
DIRS = ("/", "/dev", "/etc", "/home", "/proc", "/root", "/run", "/tmp", "/var", "/var/tmp")


@dataclass
class Process:
    exits_at: float
    run: Run
    capture: bool


@dataclass
class Handle:
    path: str
    mode: str
    pos: int = 0


@dataclass
class FakeGuest:
    """The guest system. ``on_power`` is told ``"poweroff"`` or ``"reboot"`` when the guest
    asks for it."""

    hostname: str
    macs: list[str]
    files: dict[str, bytearray] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=lambda: set(DIRS))
    up: bool = False   # booted far enough for its agent to answer
    clock_ns: int | None = None
    on_power: Callable[[str], None] = lambda _what: None
    procs: dict[int, Process] = field(default_factory=dict)
    handles: dict[int, Handle] = field(default_factory=dict)
    _next: int = 1000

    def __post_init__(self) -> None:
        self.files.setdefault("/etc/hostname", bytearray(f"{self.hostname}\n".encode()))
        self.files.setdefault("/etc/os-release", bytearray(b'NAME="Corral fake guest"\n'))

    # -- RAM -------------------------------------------------------------------------------
    def ram(self) -> dict[str, Any]:
        """The guest's memory as JSON-able data."""
        return {"hostname": self.hostname, "macs": list(self.macs), "up": self.up,
                "dirs": sorted(self.dirs),
                "files": {p: base64.b64encode(bytes(d)).decode() for p, d in self.files.items()}}

    def load_ram(self, ram: dict[str, Any]) -> None:
        self.hostname = str(ram["hostname"])
        self.macs = [str(m) for m in ram["macs"]]
        self.up = bool(ram["up"])
        self.dirs = set(ram["dirs"])
        self.files = {p: bytearray(base64.b64decode(d)) for p, d in ram["files"].items()}
        self.procs.clear()
        self.handles.clear()

    def _id(self) -> int:
        self._next += 1
        return self._next

    # -- processes -------------------------------------------------------------------------
    def spawn(self, argv: list[str], stdin: bytes | None, capture: bool, now: float) -> int:
        """Run ``argv``; its pid.

        :raises AgentError: the program does not exist (as QGA says when it cannot spawn).
        """
        if not argv or posixpath.basename(argv[0]) not in COMMANDS:
            name = argv[0] if argv else ""
            raise AgentError(f"Guest agent command failed, error was 'Failed to execute "
                             f"child process “{name}” (No such file or directory)'")
        run = self.run(argv, stdin or b"")
        pid = self._id()
        self.procs[pid] = Process(now + run.seconds, run, capture)
        return pid

    def status(self, pid: int, now: float) -> tuple[bool, Run]:
        """Whether ``pid`` has exited, and what it did (its output only when captured).

        :raises AgentError: no such process (QGA forgets one once its exit was read).
        """
        proc = self.procs.get(pid)
        if proc is None:
            raise AgentError(f"Invalid parameter 'pid' ({pid})")
        if now < proc.exits_at:
            return False, Run()
        del self.procs[pid]
        return True, proc.run if proc.capture else Run(proc.run.code)

    def run(self, argv: list[str], stdin: bytes) -> Run:
        command = COMMANDS.get(posixpath.basename(argv[0]))
        if command is None:
            return Run(127, err=f"sh: {argv[0]}: not found\n".encode())
        return command(self, argv[1:], stdin)

    # -- files -----------------------------------------------------------------------------
    def path(self, path: str) -> str:
        return posixpath.normpath(posixpath.join("/", path))

    def can_create(self, path: str) -> bool:
        return posixpath.dirname(path) in self.dirs and path not in self.dirs

    def write(self, path: str, data: bytes, append: bool = False) -> bool:
        path = self.path(path)
        if path == "/dev/null":
            return True
        if path == HOSTNAME:  # the kernel's hostname, as a file
            self.hostname = data.decode(errors="replace").strip()
            return True
        if not self.can_create(path):
            return False
        if append and path in self.files:
            self.files[path] += data
        else:
            self.files[path] = bytearray(data)
        return True

    def open(self, path: str, mode: str) -> int:
        """:raises AgentError: in QGA's words, when the file cannot be opened."""
        path = self.path(path)
        if mode.startswith("r") and path not in self.files:  # r and r+ create nothing
            raise AgentError(f"failed to open file '{path}' (mode: '{mode}'): "
                             "No such file or directory")
        if path not in self.files and not self.can_create(path):
            raise AgentError(f"failed to open file '{path}' (mode: '{mode}'): "
                             "No such file or directory")
        if "w" in mode:
            self.files[path] = bytearray()
        self.files.setdefault(path, bytearray())
        handle = self._id()
        start = len(self.files[path]) if "a" in mode else 0
        self.handles[handle] = Handle(path, mode, start)
        return handle

    def _handle(self, handle: int) -> Handle:
        found = self.handles.get(handle)
        if found is None:
            raise AgentError(f"handle '{handle}' has not been found")
        return found

    def read(self, handle: int, count: int) -> tuple[bytes, bool]:
        h = self._handle(handle)
        if "r" not in h.mode and "+" not in h.mode:
            raise AgentError("failed to read file: Bad file descriptor")
        data = bytes(self.files.get(h.path, b"")[h.pos:h.pos + count])
        h.pos += len(data)
        return data, len(data) < count

    def write_handle(self, handle: int, data: bytes) -> None:
        h = self._handle(handle)
        if h.mode.startswith("r") and "+" not in h.mode:
            raise AgentError("failed to write to file: Bad file descriptor")
        buf = self.files.setdefault(h.path, bytearray())
        if "a" in h.mode:
            h.pos = len(buf)
        buf[h.pos:h.pos + len(data)] = data
        h.pos += len(data)

    def seek(self, handle: int, offset: int, whence: str) -> None:
        h = self._handle(handle)
        base = {"set": 0, "cur": h.pos, "end": len(self.files.get(h.path, b""))}
        if whence not in base:
            raise AgentError(f"invalid whence '{whence}'")
        h.pos = max(0, base[whence] + offset)

    def close(self, handle: int) -> None:
        self._handle(handle)
        del self.handles[handle]


