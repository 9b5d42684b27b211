"""``corral migrate VM --to HOST``: live migration to another host of the cluster, with
live progress; and the report of ``corral host drain`` (which live-migrates)."""

from __future__ import annotations

import argparse
import sys

from corral.cli.common import Parents, client, command, out

TYPE_CHECKING = False  # typing is slow to import; the CLI must start in milliseconds
if TYPE_CHECKING:
    from typing import Any


def _mib(n: Any) -> str:
    return f"{int(n or 0) / (1 << 20):.1f} MiB"


def progress_line(p: dict[str, Any]) -> str:
    """One reading of a migration, as a person reads it."""
    if p.get("status") == "copying disks":
        return f"copying disks: {_mib(p.get('disk_done'))} of {_mib(p.get('disk_total'))}"
    return (f"{p.get('status')}: sent {_mib(p.get('transferred'))}, remaining "
            f"{_mib(p.get('remaining'))}, dirty {_mib(p.get('dirty_rate'))}/s, expected "
            f"downtime {float(p.get('expected_downtime') or 0) * 1000:.0f} ms")


def _printer() -> Any:
    """Progress on stderr: rewritten in place on a terminal, a line per change of status (and
    at most one a second) in a log."""
    import time

    tty = sys.stderr.isatty()
    last: dict[str, Any] = {"status": "", "at": 0.0}

    def show(p: dict[str, Any]) -> None:
        now = time.monotonic()
        if tty:
            sys.stderr.write("\r" + progress_line(p)[:100].ljust(100))
        elif p.get("status") != last["status"] or now - float(last["at"]) >= 1.0:
            sys.stderr.write(progress_line(p) + "\n")
        else:
            return
        sys.stderr.flush()
        last["status"], last["at"] = str(p.get("status")), now

    return show


def cmd_migrate(args: argparse.Namespace) -> int:
    c = client(args)
    if args.cancel:
        res = c.migrate_cancel(args.name)
        return out(args, res, f"migration of {args.name} to {res['to']} cancelled; it runs "
                              "on where it was")
    if not args.to:
        from corral import errors

        raise errors.InvalidSpec("to", "give the host to migrate to with --to HOST")
    show = None if args.json else _printer()
    vm = c.migrate(args.name, args.to, postcopy=args.postcopy,
                   max_downtime=args.max_downtime / 1000, timeout=args.timeout,
                   bandwidth=int(args.bandwidth * (1 << 20)) if args.bandwidth else None,
                   progress=show)
    if show is not None and sys.stderr.isatty():
        sys.stderr.write("\n")
    m: dict[str, Any] = dict(vm.get("migration") or {})
    return out(args, vm, f"{vm['name']} runs on {vm.get('host')} (from {m.get('from')}): "
                         f"{m.get('total_time', 0):.2f} s, downtime "
                         f"{float(m.get('downtime', 0)) * 1000:.0f} ms, sent "
                         f"{_mib(m.get('transferred'))}"
                         f"{', post-copy' if m.get('postcopy') else ''}"
                         f"{', encrypted' if m.get('encrypted') else ' (unencrypted)'}")


def drain_report(res: dict[str, Any]) -> str:
    lines = []
    for mv in res.get("moves", []):
        if mv.get("ok"):
            lines.append(f"{mv['vm']}: {mv['from']} -> {mv['to']} in {mv['total_time']:.2f} s "
                         f"(downtime {float(mv['downtime']) * 1000:.0f} ms)")
        else:
            lines.append(f"{mv['vm']}: not moved: {mv.get('error')}")
    left = res.get("left") or []
    lines.append(f"host {res.get('host')} is draining; "
                 + (f"still running there: {', '.join(left)}" if left else "no VM runs there"))
    return "\n".join(lines)


def cmd_host_drain(args: argparse.Namespace) -> int:
    res = client(args).host_drain(args.host, parallel=args.parallel)
    out(args, res, drain_report(res))
    return 0 if not res.get("left") else 12


def register(sub: Any, pa: Parents) -> None:
    word = "migrate"
    p = command(sub, pa, word, cmd_migrate, "live-migrate a running VM to another host",
                "Move a running VM to another host of the cluster while it keeps running: "
                "its memory is copied while the guest runs (pre-copy, slowing the guest when "
                "it dirties memory faster than the link), then it stands still at most "
                "--max-downtime while the rest moves. Disks of its own are copied live too; "
                "files on shared storage stay where they are. Name, MAC and addresses stay. "
                "On failure or --cancel it runs on where it was, and the target keeps "
                "nothing. The stream and the disk copies are encrypted (QEMU TLS, a CA made for "
                "this migration) when both hosts have cluster.migrate_tls (the default; "
                "CORRAL_MIGRATE_TLS=0 turns it off), else sent in clear: the answer and "
                "'corral show' (last migration) say which.")
    p.add_argument("--to", metavar="HOST", help="the host to move it to")
    p.add_argument("--postcopy", action="store_true",
                   help="switch to post-copy after the first pass (for guests that dirty "
                        "memory faster than the link; not with disks of its own)")
    p.add_argument("--max-downtime", type=float, default=300.0, metavar="MS",
                   help="milliseconds the guest may stand still at the switch (default 300)")
    p.add_argument("--bandwidth", type=float, metavar="MIB",
                   help="MiB per second the stream may use (default: as fast as the link)")
    p.add_argument("--timeout", type=float, default=600.0, metavar="S",
                   help="give up (the VM runs on here) after this many seconds")
    p.add_argument("--cancel", action="store_true",
                   help="stop the migration of the VM under way; it runs on where it was")
