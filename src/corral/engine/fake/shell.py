"""The fake guest's programs and its little shell.

``true``, ``false``, ``echo [-n]``, ``cat [FILE…]`` (stdin without files), ``sha256sum
FILE…``, ``hostname [NAME]``, ``date [-s @N]``, ``ip link set dev ethN address MAC`` (other
``ip`` commands succeed silently), ``rm [-f]``, ``mkdir [-p]``, ``touch``, ``sleep N``,
``uname``, ``poweroff``, ``reboot``, and ``sh -c SCRIPT [ARG0 ARG…]``. The shell knows ``;``,
``&&``, ``||``, ``exec``, ``exit N``, ``$0``…``$9``, ``"$@"`` and the redirections ``>``,
``>>``, ``2>``, ``2>&1``; no pipes, globs or other variables.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

_PARAM = re.compile(r"\$\{?(\d)\}?")


@dataclass
class Run:
    """What a command did: its exit code, its output, and how long it pretends to run."""

    code: int = 0
    out: bytes = b""
    err: bytes = b""
    seconds: float = 0.0


class System(Protocol):
    """What the programs see of the guest (:class:`~corral.engine.fake.guest.FakeGuest`)."""

    hostname: str
    macs: list[str]
    files: dict[str, bytearray]
    dirs: set[str]

    @property
    def on_power(self) -> Callable[[str], None]: ...
    def path(self, path: str) -> str: ...
    def write(self, path: str, data: bytes, append: bool = False) -> bool: ...
    def run(self, argv: list[str], stdin: bytes) -> Run: ...


Command = Callable[[System, list[str], bytes], Run]


def _echo(g: System, args: list[str], _in: bytes) -> Run:
    newline = not (args and args[0] == "-n")
    text = " ".join(args[0 if newline else 1:])
    return Run(out=(text + ("\n" if newline else "")).encode())


def _read_files(g: System, tool: str, args: list[str],
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


def _cat(g: System, args: list[str], stdin: bytes) -> Run:
    if not args:
        return Run(out=stdin)
    return _read_files(g, "cat", args, lambda _n, d: d)


def _sha256sum(g: System, args: list[str], stdin: bytes) -> Run:
    if not args:
        return Run(out=f"{hashlib.sha256(stdin).hexdigest()}  -\n".encode())
    return _read_files(g, "sha256sum", args,
                       lambda n, d: f"{hashlib.sha256(d).hexdigest()}  {n}\n".encode())


def _hostname(g: System, args: list[str], _in: bytes) -> Run:
    if args:
        g.hostname = args[0]
        return Run()
    return Run(out=f"{g.hostname}\n".encode())


def _ip(g: System, args: list[str], _in: bytes) -> Run:
    if len(args) >= 6 and args[:3] == ["link", "set", "dev"] and args[4] == "address":
        index = int(args[3].removeprefix("eth")) if args[3].startswith("eth") else -1
        if not 0 <= index < len(g.macs):
            return Run(1, err=f"Cannot find device \"{args[3]}\"\n".encode())
        g.macs[index] = args[5].lower()
    return Run()


def _rm(g: System, args: list[str], _in: bytes) -> Run:
    force = "-f" in args
    run = Run()
    for name in (a for a in args if not a.startswith("-")):
        if g.files.pop(g.path(name), None) is None and not force:
            run.code = 1
            run.err += f"rm: can't remove '{name}': No such file or directory\n".encode()
    return run


def _mkdir(g: System, args: list[str], _in: bytes) -> Run:
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


def _touch(g: System, args: list[str], _in: bytes) -> Run:
    for name in args:
        if g.path(name) not in g.files and not g.write(name, b""):
            return Run(1, err=f"touch: {name}: No such file or directory\n".encode())
    return Run()


def _sleep(g: System, args: list[str], _in: bytes) -> Run:
    try:
        return Run(seconds=float(args[0]))
    except (IndexError, ValueError):
        return Run(1, err=b"sleep: invalid number\n")


def _power(what: str) -> Command:
    def command(g: System, _args: list[str], _in: bytes) -> Run:
        g.on_power(what)
        return Run()
    return command


def _sh(g: System, args: list[str], stdin: bytes) -> Run:
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


def _simple(g: System, words: list[str], stdin: bytes) -> tuple[Run, bool]:
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

