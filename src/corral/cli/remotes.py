"""``corral remote add|list|rm|switch``: remote daemons (``corral serve --listen``), reached
over TLS with a token; trust on first use of the certificate's SHA-256 fingerprint."""

from __future__ import annotations

import argparse
import sys

from corral.cli.common import Parents, command, out
from corral.cli.formatter import Formatter

TYPE_CHECKING = False  # typing is slow to import; the CLI must start in milliseconds
if TYPE_CHECKING:
    from typing import Any


def cmd_add(args: argparse.Namespace) -> int:
    from corral import errors, remote
    from corral.client import Client

    if args.remote_name == remote.LOCAL:
        raise errors.InvalidSpec("name", "'local' is this host's own daemon; pick another")
    target = remote.Remote(args.url, args.fingerprint, args.ca)
    fingerprint = target.fingerprint
    if fingerprint is None and args.ca is None:
        fingerprint = target.peer_fingerprint()
        print(f"Certificate SHA-256 fingerprint: {fingerprint}", file=sys.stderr)
        if not args.accept_certificate:
            if not sys.stdin.isatty():
                raise errors.Untrusted("not trusted: check the fingerprint against the one "
                                       "'corral serve --listen' logged, then add again with "
                                       "--accept-certificate (or --fingerprint)", fingerprint)
            answer = input("Trust this certificate? (y/n) ").strip().lower()
            if answer not in ("y", "yes"):
                raise errors.Untrusted("certificate not trusted; nothing added", fingerprint)
    c = Client(url=args.url, token=args.token, fingerprint=fingerprint, ca=args.ca)
    try:
        me = c.whoami()  # the token works, or this raises its 401
    finally:
        c.close()
    data = remote.load()
    data.setdefault("remotes", {})[args.remote_name] = {
        "url": args.url, "token": args.token, "fingerprint": fingerprint, "ca": args.ca}
    remote.save(data)
    return out(args, {"name": args.remote_name, "url": args.url, "fingerprint": fingerprint,
                      "role": me["role"], "project": me["project"]},
               f"remote {args.remote_name} added ({me['name']}: {me['role']} in "
               f"{me['project'] or 'every project'}); use 'corral --remote "
               f"{args.remote_name} list' or 'corral remote switch {args.remote_name}'")


def cmd_list(args: argparse.Namespace) -> int:
    from corral import remote

    data = remote.load()
    current = data.get("current") or remote.LOCAL
    rows = [{"name": remote.LOCAL, "url": "unix socket", "fingerprint": None,
             "current": current == remote.LOCAL}]
    rows += [{"name": n, "url": e["url"], "fingerprint": e.get("fingerprint"),
              "current": current == n} for n, e in sorted(data.get("remotes", {}).items())]
    text = "\n".join(f"{'*' if r['current'] else ' '} {r['name']:<16} {r['url']:<32} "
                     f"{r['fingerprint'] or ''}" for r in rows)
    return out(args, rows, text)


def cmd_rm(args: argparse.Namespace) -> int:
    from corral import remote

    remote.get(args.remote_name)
    data = remote.load()
    del data["remotes"][args.remote_name]
    if data.get("current") == args.remote_name:
        data["current"] = None
    remote.save(data)
    return out(args, {"deleted": args.remote_name}, f"remote {args.remote_name} removed")


def cmd_switch(args: argparse.Namespace) -> int:
    from corral import remote

    if args.remote_name != remote.LOCAL:
        remote.get(args.remote_name)
    data = remote.load()
    data["current"] = None if args.remote_name == remote.LOCAL else args.remote_name
    remote.save(data)
    return out(args, {"current": args.remote_name},
               f"commands now go to {args.remote_name}")


def register(sub: Any, pa: Parents) -> None:
    """Add ``remote`` and its verbs."""
    rp = sub.add_parser("remote", help="remote daemons reached over TLS with a token",
                        formatter_class=Formatter, description="Remote daemons ('corral "
                        "serve --listen ADDR:PORT'). 'add' shows the certificate's SHA-256 "
                        "fingerprint and keeps it: a later certificate that differs is "
                        "refused. Remotes are kept in ~/.config/corral/remotes.json (0600).")
    rsub = rp.add_subparsers(dest="remote_command", metavar="COMMAND", required=True)
    p = command(rsub, pa, "add", cmd_add, "add a remote (checks the token)", vm=False)
    p.add_argument("remote_name", metavar="NAME")
    p.add_argument("url", metavar="URL", help="https://HOST:PORT")
    p.add_argument("--token", required=True, help="a token made with 'corral token create'")
    p.add_argument("--fingerprint", metavar="SHA256", help="the certificate's expected "
                   "fingerprint (else it is shown and asked)")
    p.add_argument("--ca", metavar="PEM", help="trust certificates this CA signs instead")
    p.add_argument("--accept-certificate", action="store_true",
                   help="trust the certificate shown without asking (scripts)")
    command(rsub, pa, "list", cmd_list, "the remotes; * marks where commands go", vm=False)
    for verb, func, help_ in (("rm", cmd_rm, "forget a remote"),
                              ("switch", cmd_switch, "send commands to NAME ('local': this "
                                                     "host's daemon)")):
        command(rsub, pa, verb, func, help_, vm=False).add_argument("remote_name",
                                                                    metavar="NAME")
