"""The guest inside a :class:`~corral.engine.fake.FakeMachine`: a tiny in-memory system that
its guest agent acts on.

What lives in the guest's RAM (and so moves with a saved state, a memory snapshot or a
warm-start template): its files, its hostname, its NICs' MACs and whether it has booted.
Processes run at once; ``sleep N`` only delays the moment they are seen to exit.

Commands: ``true``, ``false``, ``echo [-n]``, ``cat [FILE…]`` (stdin without files),
``sha256sum FILE…``, ``hostname [NAME]``, ``date [-s @N]``, ``ip link set dev ethN address
MAC`` (other ``ip`` commands succeed silently), ``rm [-f]``, ``mkdir [-p]``, ``touch``,
``sleep N``, ``uname``, ``poweroff``, ``reboot``, and ``sh -c SCRIPT [ARG0 ARG…]``. The shell
knows ``;``, ``&&``, ``||``, ``exec``, ``exit N``, ``$0``…``$9``, ``"$@"`` and the redirections
``>``, ``>>``, ``2>``, ``2>&1``; no pipes, globs or variables beyond those.
"""

from __future__ import annotations

import base64
import hashlib
import posixpath
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from corral.errors import AgentError

DIRS = ("/", "/dev", "/etc", "/home", "/proc", "/root", "/run", "/tmp", "/var", "/var/tmp")
_PARAM = re.compile(r"\$\{?(\d)\}?")


@dataclass
class Run:
    """What a command did: its exit code, its output, and how long it pretends to run."""

    code: int = 0
    out: bytes = b""
    err: bytes = b""
    seconds: float = 0.0


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
        if not argv or _base(argv[0]) not in COMMANDS:
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
        command = COMMANDS.get(_base(argv[0]))
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
        if "r" in mode and "+" not in mode and path not in self.files:
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


def _base(program: str) -> str:
    return posixpath.basename(program)


# -- the commands -------------------------------------------------------------------------
Command = Callable[[FakeGuest, list[str], bytes], Run]


def _echo(g: FakeGuest, args: list[str], _in: bytes) -> Run:
    newline = not (args and args[0] == "-n")
    text = " ".join(args[0 if newline else 1:])
    return Run(out=(text + ("\n" if newline else "")).encode())


def _read_files(g: FakeGuest, tool: str, args: list[str],
                each: Callable[[str, bytes], bytes]) -> Run:
    run = Run()
    for name in args:
        data = g.files.get(g.path(name))
        if data is None:
            run.code = 1
            run.err += f"{tool}: can't open '{name}': No such file or directory\n".encode()
        else:
            run.out += each(name, bytes(data))
    return run


def _cat(g: FakeGuest, args: list[str], stdin: bytes) -> Run:
    if not args:
        return Run(out=stdin)
    return _read_files(g, "cat", args, lambda _n, d: d)


def _sha256sum(g: FakeGuest, args: list[str], stdin: bytes) -> Run:
    if not args:
        return Run(out=f"{hashlib.sha256(stdin).hexdigest()}  -\n".encode())
    return _read_files(g, "sha256sum", args,
                       lambda n, d: f"{hashlib.sha256(d).hexdigest()}  {n}\n".encode())


def _hostname(g: FakeGuest, args: list[str], _in: bytes) -> Run:
    if args:
        g.hostname = args[0]
        return Run()
    return Run(out=f"{g.hostname}\n".encode())


def _ip(g: FakeGuest, args: list[str], _in: bytes) -> Run:
    if len(args) >= 6 and args[:3] == ["link", "set", "dev"] and args[4] == "address":
        index = int(args[3].removeprefix("eth")) if args[3].startswith("eth") else -1
        if not 0 <= index < len(g.macs):
            return Run(1, err=f"Cannot find device \"{args[3]}\"\n".encode())
        g.macs[index] = args[5].lower()
    return Run()


def _rm(g: FakeGuest, args: list[str], _in: bytes) -> Run:
    force = "-f" in args
    run = Run()
    for name in (a for a in args if not a.startswith("-")):
        if g.files.pop(g.path(name), None) is None and not force:
            run.code = 1
            run.err += f"rm: can't remove '{name}': No such file or directory\n".encode()
    return run


def _mkdir(g: FakeGuest, args: list[str], _in: bytes) -> Run:
    parents = "-p" in args
    for name in (g.path(a) for a in args if not a.startswith("-")):
        chain = [name]
        while parents and posixpath.dirname(chain[-1]) not in g.dirs:
            chain.append(posixpath.dirname(chain[-1]))
        if posixpath.dirname(chain[-1]) not in g.dirs:
            return Run(1, err=f"mkdir: can't create directory '{name}': No such file or "
                              "directory\n".encode())
        g.dirs.update(chain)
    return Run()


def _touch(g: FakeGuest, args: list[str], _in: bytes) -> Run:
    for name in args:
        if g.path(name) not in g.files and not g.write(name, b""):
            return Run(1, err=f"touch: {name}: No such file or directory\n".encode())
    return Run()


def _sleep(g: FakeGuest, args: list[str], _in: bytes) -> Run:
    try:
        return Run(seconds=float(args[0]))
    except (IndexError, ValueError):
        return Run(1, err=b"sleep: invalid number\n")


def _power(what: str) -> Command:
    def command(g: FakeGuest, _args: list[str], _in: bytes) -> Run:
        g.on_power(what)
        return Run()
    return command


def _sh(g: FakeGuest, args: list[str], stdin: bytes) -> Run:
    if len(args) < 2 or args[0] != "-c":
        return Run(2, err=b"sh: the fake guest runs only 'sh -c SCRIPT'\n")
    params = args[2:] or ["sh"]
    try:
        lexer = shlex.shlex(args[1], posix=True, punctuation_chars=";&|<>")
        lexer.whitespace_split = True
        tokens = list(lexer)
    except ValueError as err:
        return Run(2, err=f"sh: syntax error: {err}\n".encode())
    total = Run()
    op = ";"
    for words, nxt in _commands(tokens):
        if (op == "&&" and total.code != 0) or (op == "||" and total.code == 0):
            op = nxt
            continue
        run, leave = _simple(g, _expand(words, params), stdin)
        total.code, total.seconds = run.code, total.seconds + run.seconds
        total.out, total.err = total.out + run.out, total.err + run.err
        if leave:
            break
        op = nxt
    return total


def _commands(tokens: list[str]) -> list[tuple[list[str], str]]:
    out: list[tuple[list[str], str]] = []
    words: list[str] = []
    for token in tokens:
        if token in (";", "&&", "||"):
            out.append((words, token))
            words = []
        else:
            words.append(token)
    if words:
        out.append((words, ";"))
    return out


def _expand(words: list[str], params: list[str]) -> list[str]:
    out: list[str] = []
    for word in words:
        if word == "$@":
            out += params[1:]
            continue
        out.append(_PARAM.sub(lambda m: params[int(m.group(1))]
                              if int(m.group(1)) < len(params) else "", word))
    return out


def _simple(g: FakeGuest, words: list[str], stdin: bytes) -> tuple[Run, bool]:
    """Run one command with its redirections; whether the script ends here."""
    argv: list[str] = []
    redirects: list[tuple[str, str]] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word in (">", ">>", ">&") and i + 1 < len(words):
            fd = "2" if argv and argv[-1] == "2" and i > 0 else "1"
            if fd == "2":
                argv.pop()
            redirects.append((fd + word, words[i + 1]))
            i += 2
            continue
        argv.append(word)
        i += 1
    leave = bool(argv) and argv[0] == "exec"
    if leave:
        argv = argv[1:]
    if argv and argv[0] == "exit":
        return Run(int(argv[1]) if len(argv) > 1 else 0), True
    run = g.run(argv, stdin) if argv else Run()
    for how, target in redirects:
        if how == "2>&":
            run.out, run.err = run.out + run.err, b""
            continue
        data = run.err if how.startswith("2") else run.out
        if not g.write(target, data, append=how.endswith(">>")):
            return Run(2, err=f"sh: can't create {target}: nonexistent directory\n"
                       .encode()), True
        if how.startswith("2"):
            run.err = b""
        else:
            run.out = b""
    return run, leave


COMMANDS: dict[str, Command] = {
    "true": lambda g, a, i: Run(),
    "false": lambda g, a, i: Run(1),
    "echo": _echo,
    "cat": _cat,
    "sha256sum": _sha256sum,
    "hostname": _hostname,
    "date": lambda g, a, i: Run() if a[:1] == ["-s"] else Run(out=b"Thu Jan  1 00:00:00 UTC "
                                                                  b"1970\n"),
    "ip": _ip,
    "rm": _rm,
    "mkdir": _mkdir,
    "touch": _touch,
    "sleep": _sleep,
    "uname": lambda g, a, i: Run(out=b"Linux\n"),
    "poweroff": _power("poweroff"),
    "reboot": _power("reboot"),
    "sh": _sh,
}
