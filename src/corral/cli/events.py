"""``corral events [-f] [--vm NAME]`` (the event log, and following it live) and
``corral dashboard`` (where the web page is)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from corral.cli.common import Parents, client, command, out

TYPE_CHECKING = False  # typing is slow to import; the CLI must start in milliseconds
if TYPE_CHECKING:
    from typing import Any


def line(ev: dict[str, Any]) -> str:
    """One event as a line: time, id, VM, kind and its details."""
    ts = ev["ts"]
    stamp = time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts % 1 * 1000):03d}"
    d = ev.get("detail") or {}
    detail = (f"{d.get('who')} {d.get('action')} -> {d.get('status')} {d.get('result')}"
              if ev["kind"] == "audit" else " ".join(f"{k}={v}" for k, v in d.items()))
    return (f"{stamp}  {ev['id']:>6}  {ev.get('project', ''):<12} {ev['vm']:<20} "
            f"{ev['kind']:<16} {detail}").rstrip()


def cmd_events(args: argparse.Namespace) -> int:
    project, args.project = args.project, None  # a filter here: also a removed project's
    c = client(args, timeout=60.0)
    since = args.since
    if not args.follow:
        evs = c.events(since or 0, args.vm, project,
                       tail=None if since is not None else args.tail)
        return out(args, evs, "\n".join(line(dict(e)) for e in evs) or None)
    if since is None:  # the last few for context, then everything after them
        recent = c.events(0, args.vm, project, tail=args.tail)
        for ev in recent:
            _print(args, dict(ev))
        since = recent[-1]["id"] if recent else 0
    for ev in c.follow_events(since, args.vm):
        if project is None or ev.get("project") == project:
            _print(args, dict(ev))
    return 0


def _print(args: argparse.Namespace, ev: dict[str, Any]) -> None:
    print(json.dumps(ev, sort_keys=True) if args.json else line(ev), flush=True)


def cmd_dashboard(args: argparse.Namespace) -> int:
    info = client(args).web_info()
    if info["url"] is None:
        human = ("the daemon serves its web page only on its unix socket "
                 f"({info['socket']}); restart it with CORRAL_WEB_LISTEN=127.0.0.1:8470 "
                 "(loopback only) and open that address in a browser")
        if args.json:
            return out(args, info)
        print(human, file=sys.stderr)
        return 1
    if args.no_login:
        return out(args, info, info["url"])
    import secrets

    c = client(args)
    name = f"dashboard-{secrets.token_hex(3)}"
    made = c.token_create(name, args.role, "default" if args.role == "admin" else
                          (args.project or "default"), args.expires)
    link = f"{info['url']}#token={made['secret']}"
    return out(args, {**info, "url": link, "token": name},
               f"{link}\n(a login link for this browser tab: token '{name}', role "
               f"{args.role}, expires in {args.expires}; 'corral token revoke {name}' "
               "ends it)")


def register(sub: Any, pa: Parents) -> None:
    """Add ``events`` and ``dashboard``."""
    p = command(sub, pa, "events", cmd_events, "print the event log; -f follows it live",
                "Print the event log (state changes, operations, queue moves, and the audit "
                "records of every mutating request: who, what, on which resource, the "
                "result). --project P: that project's only. With -f, follow it as events "
                "happen (Ctrl-C stops); a broken stream is resumed without missing or "
                "repeating events.", vm=False)
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    p.add_argument("--vm", metavar="NAME", help="only the events of this VM")
    p.add_argument("--since", type=int, metavar="ID", help="the events after this id")
    p.add_argument("--tail", type=int, default=20, metavar="N",
                   help="without --since: the last N events (default 20)")
    p = command(sub, pa, "dashboard", cmd_dashboard, "print a login link to the web page",
                "Print the address of the daemon's web page (it listens on TCP when started "
                "with CORRAL_WEB_LISTEN=HOST:PORT, a loopback address) with a fresh token "
                "in it: opening the link logs that browser tab in. The token is an "
                "ordinary one (corral token list/revoke).", vm=False)
    p.add_argument("--role", choices=("admin", "operator", "viewer"), default="admin",
                   help="the role of the link's token (default admin)")
    p.add_argument("--expires", default="12h", metavar="DURATION",
                   help="how long the link works (default 12h)")
    p.add_argument("--no-login", action="store_true", help="only the address, no token")
