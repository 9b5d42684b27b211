"""The ``corral`` command: global options, dispatch to one module per resource, and errors
turned into exit codes (see ``corral --help``).

Only the standard library is imported on the path of ordinary commands, and only the parser
of the command being run is built (with the one module that defines it), so ``corral list``
or ``corral pause`` costs a few tens of milliseconds; ``serve`` and ``image build`` import
their heavier parts when they run. The commands scripts run in loops skip ``argparse``
altogether when given nothing but their NAME (see :data:`LEAN`), and on this host's daemon
skip the Client and ``json`` too (:mod:`corral.cli.quick`).
"""

from __future__ import annotations

import os
import sys

from corral import errors

TYPE_CHECKING = False  # typing is slow to import; the CLI must start in milliseconds
if TYPE_CHECKING:
    import argparse
    from typing import Any, NoReturn

EPILOG = """\
examples:
  corral serve &                          start the daemon (CORRAL_HOME picks the data dir)
  corral image build tiny                 build the default guest image from Debian packages
  corral run web --memory 256M            create and boot a VM, return when it is ready
  corral list                             all VMs and their states
  corral show web --json                  one VM, as JSON for scripts
  corral pause web; corral resume web
  corral console web                      the serial console (Ctrl-] detaches)
  corral shutdown web; corral rm web      (rm is also 'destroy' and 'delete')
  corral events -f --vm web               follow the VM's events live
  corral dashboard                        a login link to the web page (CORRAL_WEB_LISTEN)
  corral apply -f lab.yaml                create or update a stack of VMs, networks, routers
  corral config show                      every setting in force and where it came from

  corral --remote lab list                a remote daemon ('corral remote add lab URL')

environment (each also a key of the configuration file, see 'corral config show'):
  CORRAL_CONFIG  the configuration file (default $CORRAL_HOME/corral.toml, else
                 /etc/corral/corral.toml)
  CORRAL_HOME    data directory (default /var/lib/corral as root, else ~/.local/share/corral)
  CORRAL_SOCKET  the daemon's socket (default $CORRAL_HOME/corral.sock)
  CORRAL_URL     a remote daemon, https://HOST:PORT (with CORRAL_TOKEN, and
                 CORRAL_FINGERPRINT or CORRAL_CA to trust its certificate)
  CORRAL_ACCEL   force the accelerator: kvm or tcg (default: detected)

exit status: 0 ok, 2 invalid input, 3 not found, 4 already exists, 5 wrong state,
6 timeout, 7 guest agent error, 8 daemon not running, 9 no capacity, 10 needs root,
11 disk full, 12 migration failed, 13 no valid token, 14 role too low, 15 over a quota,
16 rate limited, 17 certificate not trusted, 18 cluster store unreachable, 19 cluster host
down or silent, 1 other errors.
"""

# which module of corral.cli defines each command word (aliases included)
COMMANDS: dict[str, tuple[str, ...]] = {
    "host": ("serve", "queue", "trace", "host", "cluster", "image", "config"),
    "vms": ("create", "run", "start", "pause", "resume", "shutdown", "stop", "reboot", "save",
            "restore", "clone", "export", "import", "rm", "destroy", "delete", "list", "show",
            "console", "logs", "move"),
    "migrate": ("migrate",),
    "guest": ("exec", "cp", "ip"),
    "disks": ("disk", "attach-disk", "detach-disk"),
    "snapshots": ("snapshot",),
    "networks": ("network", "firewall", "attach-nic", "detach-nic"),
    "routers": ("router",),
    "models": ("model", "simulate"),
    "pools": ("pool",),
    "access": ("token", "project", "whoami"),
    "remotes": ("remote",),
    "events": ("events", "dashboard"),
    "stacks": ("apply", "plan", "stack"),
}
MODULE_OF = {word: module for module, words in COMMANDS.items() for word in words}

# The commands scripts and sandbox services run in loops, given nothing but their NAME (or
# nothing, for list) and perhaps --json: their arguments are made here as argparse would
# make them (tests/unit/test_cli_lean.py compares the two), without importing argparse,
# gettext and locale or building the parser, which together cost more than the request.
# Anything else (an option, --help, a missing NAME) goes through argparse as always.
# word -> (module, function, takes NAME, the command's other arguments and their defaults)
LEAN: dict[str, tuple[str, str, bool, dict[str, Any]]] = {
    "list": ("vms", "cmd_list", False, {"host": None}),
    "pause": ("vms", "cmd_pause", True, {}),
    "resume": ("vms", "cmd_resume", True, {}),
    "show": ("vms", "cmd_show", True, {"explain": False}),
}
MANY = frozenset({"pause", "resume"})  # LEAN commands whose NAME is one or more (a list)


class _Null:
    """Stands in for the parsers of commands this run does not use: building all of them
    costs more than the CLI's whole time budget. Every call is accepted and ignored."""

    def __getattr__(self, _name: str) -> Any:
        return self._ignore

    def _ignore(self, *_args: Any, **_kwargs: Any) -> Any:
        return self


class _OnlySub:
    """The ``corral`` subcommands, of which only ``only`` is built (all when None)."""

    def __init__(self, real: Any, only: str | None) -> None:
        self.real = real
        self.only = only

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        if self.only is None or self.only == name or self.only in kwargs.get("aliases", ()):
            return self.real.add_parser(name, **kwargs)
        return _Null()


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``corral`` parser; with ``only`` (a command word), just that command's part of
    it is built; an unknown word (or None) builds everything, so argparse can list the
    choices."""
    import argparse
    import importlib

    from corral.cli.common import Parents
    from corral.cli.formatter import Formatter

    # every parser gets the fixed-width formatter: the default one imports shutil to size
    # the terminal, even when no help is printed
    common = argparse.ArgumentParser(add_help=False, formatter_class=Formatter)
    common.add_argument("--socket", metavar="PATH",
                        help="the daemon's unix socket (default: the setting 'socket', "
                             "$CORRAL_SOCKET, else $CORRAL_HOME/corral.sock)")
    common.add_argument("--remote", metavar="NAME", default=None,
                        help="a remote daemon added with 'corral remote add' ('local': this "
                             "host's)")
    common.add_argument("--project", metavar="P", default=None,
                        help="the project to work in (admins; a token works in its own)")
    js = argparse.ArgumentParser(add_help=False, formatter_class=Formatter)
    js.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser = argparse.ArgumentParser(
        prog="corral", formatter_class=Formatter, epilog=EPILOG,
        description="Corral manages virtual machines on QEMU: create, start, pause, resume, "
                    "shut down and remove them, and reach their consoles.")
    parser.add_argument("--version", action="version", version="corral 0.1.0")
    real_sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    module = MODULE_OF.get(only) if only is not None else None
    sub = _OnlySub(real_sub, only if module else None)
    parents = Parents(common, js)
    for name in [module] if module else COMMANDS:
        mod = importlib.import_module(f"corral.cli.{name}")
        if name == "models":
            mod.register(sub, common, js)
        else:
            mod.register(sub, parents)
    return parser


GLOBAL = ("--remote", "--project", "--socket")  # also accepted before the command word


def _leading(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """``corral --remote NAME list``: the global options before the command word."""
    found: dict[str, str] = {}
    while argv:
        key, eq, value = argv[0].partition("=")
        if key not in GLOBAL or (not eq and len(argv) < 2):
            break
        found[key[2:]] = value if eq else argv[1]
        argv = argv[1:] if eq else argv[2:]
    return found, argv


def lean(argv: list[str]) -> Any:
    """The arguments of a :data:`LEAN` command as argparse would parse them, or None when
    ``argv`` is anything else."""
    words = [a for a in argv if a != "--json"]
    entry = LEAN.get(argv[0]) if argv else None
    if entry is None:
        return None
    module, func, named, extra = entry
    if len(words) != 1 + named or any(w.startswith("-") for w in words):
        return None
    import importlib
    import types

    args = types.SimpleNamespace(
        command=words[0], socket=None, remote=None, project=None, json="--json" in argv,
        func=getattr(importlib.import_module(f"corral.cli.{module}"), func), **extra)
    if named:
        args.name = [words[1]] if words[0] in MANY else words[1]
    return args


def parsed(argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed by the command's parser (argparse exits on bad input, with usage)."""
    leading, argv = _leading(argv)
    word = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(word)
    tail: list[str] | None = None
    if "--" in argv:  # everything after '--' belongs to the guest command, options included
        cut = argv.index("--")
        argv, tail = argv[:cut], argv[cut + 1:]
    args, extra = parser.parse_known_args(argv)
    if extra:  # said by the command's own parser, with its usage (not corral's whole one)
        _innermost(parser, argv).error(f"unrecognized arguments: {' '.join(extra)}")
    for key, value in leading.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if tail is not None:
        if not hasattr(args, "command_argv"):
            parser.error("'--' is only for 'corral exec NAME -- CMD' and 'corral run --rm'")
        args.command_argv = tail
    return args


def _innermost(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The parser of the (sub)command ``argv`` names: ``corral disk resize``'s for
    ``disk resize d1 --size 1G``."""
    import argparse

    for word in (a for a in argv if not a.startswith("-")):
        subs = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)),
                    None)
        if subs is None:
            break
        parser = subs.choices.get(word, parser)
    return parser


def _site() -> None:
    """Run ``site`` if the command started without it (``-S``: see packaging/corral): every
    path but the quick one may import the environment's other packages."""
    if sys.flags.no_site:
        import site

        site.main()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from corral.cli import quick

    try:
        code = quick.run(argv)
        if code is None:
            _site()
            args = lean(argv) or parsed(argv)
            code = int(args.func(args))
        return code
    except errors.CorralError as err:
        print(f"corral: error: {err.message}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def command() -> NoReturn:
    """``corral`` as a command (the script packaging/corral): :func:`main`, then out. After
    the quick path, out at once: the interpreter's teardown (every module freed one by one)
    would add a tenth to the command's time, and that path leaves nothing to tear down (no
    thread, no exit hook, no file but stdout, which it flushed, and stderr)."""
    code = main()
    from corral.cli import quick

    if quick.answered:
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    command()
