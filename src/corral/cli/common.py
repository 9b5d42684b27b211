"""What every command module of the CLI shares: the Client, printing, the making of a
command's parser (the help formatter is :mod:`corral.cli.formatter`).

Standard library only, and not even ``argparse`` until a parser is built: the CLI must
start in milliseconds.
"""

from __future__ import annotations

import json
import sys

TYPE_CHECKING = False  # typing is slow to import; the CLI must start in milliseconds
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from corral.client import Client


def client(args: argparse.Namespace, timeout: float | None = 300.0) -> Client:
    """The daemon this command talks to: ``--remote NAME``, else ``$CORRAL_URL`` (with
    ``$CORRAL_TOKEN``), else ``--socket``/``$CORRAL_SOCKET``, else the remote chosen with
    ``corral remote switch``, else this host's daemon."""
    import os

    from corral.client import Client

    project = getattr(args, "project", None)
    name = getattr(args, "remote", None)
    if name is None and not os.environ.get("CORRAL_URL") and not args.socket:
        from corral import remote

        name = remote.current()
    if name is not None and name != "local":
        from corral import remote

        entry = remote.get(name)
        return Client(url=entry["url"], token=entry.get("token"), timeout=timeout,
                      fingerprint=entry.get("fingerprint"), ca=entry.get("ca"),
                      project=project)
    if os.environ.get("CORRAL_URL") and name is None:
        return Client(timeout=timeout, project=project)
    return Client(args.socket, timeout=timeout, project=project)


def out(args: argparse.Namespace, data: Any, human: str | None = None) -> int:
    """Print ``data`` as JSON with ``--json``, else ``human`` (if any); return 0."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True))
    elif human is not None:
        print(human)
    return 0


def each(args: argparse.Namespace, act: Any, say: Any) -> int:
    """Run ``act(name)`` for each NAME of a ``many`` command, in order (a name given twice:
    once), printing ``say(result)`` for each, or with ``--json`` the result (several names:
    a list of those that succeeded). With several names, a failure is printed as an error
    line and the others still run; the exit status is the first failure's. One name fails
    as any command does."""
    from corral import errors

    names = list(dict.fromkeys(args.name if isinstance(args.name, list) else [args.name]))
    if len(names) == 1:
        data = act(names[0])
        return out(args, data, say(data))
    done: list[Any] = []
    code = 0
    for name in names:
        try:
            data = act(name)
        except errors.CorralError as err:
            sys.stdout.flush()
            print(f"corral: error: {err.message}", file=sys.stderr)
            code = code or err.exit_code
            continue
        done.append(data)
        if not getattr(args, "json", False):
            print(say(data))
    if getattr(args, "json", False):
        out(args, done)
    return code


def exit_status(res: dict[str, Any]) -> int:
    """A guest command's exit status as a shell gives it: 128+N when killed by signal N."""
    if res.get("signal"):
        return 128 + int(res["signal"])
    return int(res.get("exitcode") or 0)


def command_result(args: argparse.Namespace, res: Any) -> int:
    """Print a finished guest command's output (or all of it as JSON); return its status."""
    if args.json:
        res["stdout"] = res["stdout"].decode(errors="replace")
        res["stderr"] = res["stderr"].decode(errors="replace")
        out(args, res)
    else:
        sys.stdout.buffer.write(res["stdout"])
        sys.stdout.flush()
        sys.stderr.buffer.write(res["stderr"])
        sys.stderr.flush()
    return exit_status(res)


def transfer_progress(title: str) -> Any:
    """A ``progress(done, total)`` callback drawing a bar for a file sent or received, or
    None when stderr is not a terminal (a log, a script reading one error line)."""
    if not sys.stderr.isatty():
        return None
    from corral.cli.progress import ProgressBar

    bar = ProgressBar(title)

    def progress(done: int, total: int) -> None:
        bar(f"{done >> 20} of {total >> 20} MiB", done / total if total else 1.0)
        if done >= total:
            bar.done()

    return progress


class Parents:
    """The option sets commands share: ``--socket``, ``--remote``, ``--project`` (common)
    and ``--json`` (js)."""

    def __init__(self, common: argparse.ArgumentParser, js: argparse.ArgumentParser) -> None:
        self.common = common
        self.js = js


def command(sub: Any, parents: Parents, name: str, func: Any, help_: str, desc: str = "",
            *, js: bool = True, vm: bool = True, aliases: tuple[str, ...] = (),
            many: bool = False) -> argparse.ArgumentParser:
    """Add command ``name`` running ``func``; ``vm``: it takes the VM's NAME (``many``: one
    or more NAMEs, a list; see :func:`each`)."""
    from corral.cli.formatter import Formatter

    p: argparse.ArgumentParser = sub.add_parser(
        name, help=help_, description=desc or help_, formatter_class=Formatter,
        parents=[parents.common, *([parents.js] if js else [])], aliases=list(aliases))
    if vm and many:
        p.add_argument("name", metavar="NAME", nargs="+",
                       help="the VM's name (several: each in turn; an error for one does not "
                            "stop the others, and the exit status is the first error's)")
    elif vm:
        p.add_argument("name", metavar="NAME", help="the VM's name")
    p.set_defaults(func=func)
    return p
