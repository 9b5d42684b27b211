"""``corral exec|cp|ip``: acting inside a guest through its agent."""

from __future__ import annotations

import argparse
import sys

from corral import errors
from corral.cli.common import Parents, client, command, command_result, exit_status, out

TYPE_CHECKING = False  # typing is slow to import; the CLI must start in milliseconds
if TYPE_CHECKING:
    from typing import Any


def cmd_exec(args: argparse.Namespace) -> int:
    argv = args.command_argv
    if not argv:
        raise errors.InvalidSpec("command", "give the command to run after '--', e.g. "
                                            f"corral exec {args.name} -- uname -a")
    stdin = None if sys.stdin.isatty() or not args.stdin else sys.stdin.buffer.read()
    if not args.json:  # stream the output as the command writes it
        end: dict[str, Any] = {}
        for event in client(args).exec_stream(args.name, argv, args.timeout, stdin):
            for key, stream in (("stdout", sys.stdout), ("stderr", sys.stderr)):
                if key in event:
                    stream.buffer.write(event[key])
                    stream.flush()
            end = event
        return exit_status(end)
    return command_result(args, client(args).exec(args.name, argv, timeout=args.timeout,
                                                  stdin=stdin))


def cmd_cp(args: argparse.Namespace) -> int:
    from corral.cli.files import copy

    return copy(client(args), args.src, args.dest, args.json)


def cmd_ip(args: argparse.Namespace) -> int:
    ifaces = client(args).addresses(args.name)
    return out(args, ifaces, "\n".join(ip for i in ifaces for ip in i["ipv4"]))


def register(sub: Any, pa: Parents) -> None:
    """Add ``exec``, ``cp`` and ``ip``."""
    p = command(sub, pa, "exec", cmd_exec, "run a command in the guest, print its output, "
                "exit with its code", "Run a command inside the guest through its agent. Its "
                "stdout and stderr are printed when it ends, and corral exits with its exit "
                "code (128+N when killed by signal N).")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="give up after S seconds (default 60; at most a day)")
    p.add_argument("--stdin", action="store_true", help="send corral's stdin to the command")
    p.add_argument("command_argv", nargs="*", metavar="-- CMD [ARG ...]",
                   help="the command and its arguments, after '--'")
    p = command(sub, pa, "cp", cmd_cp, "copy files between the host and a guest",
                "Copy a file into a guest (corral cp FILE VM:/path) or out of one (corral cp "
                "VM:/path FILE). Binary-safe, in 1 MiB chunks, checked with SHA-256 on both "
                "sides. The CLI reads and writes the local file with your rights; a file "
                "sent goes as an upload (at most the daemon's uploads.max_size).", vm=False)
    p.add_argument("src", metavar="SRC", help="FILE or VM:/path")
    p.add_argument("dest", metavar="DEST", help="VM:/path or FILE (a directory keeps the name)")
    command(sub, pa, "ip", cmd_ip, "print the guest's IPv4 addresses (from its agent)")
