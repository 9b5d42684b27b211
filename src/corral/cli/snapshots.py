"""``corral snapshot create|list|revert|rm``: a VM's snapshots, as a tree."""

from __future__ import annotations

import argparse

from corral.cli import render
from corral.cli.common import Parents, client, command, out
from corral.cli.formatter import Formatter

TYPE_CHECKING = False  # typing is slow to import; the CLI must start in milliseconds
if TYPE_CHECKING:
    from typing import Any


def cmd_create(args: argparse.Namespace) -> int:
    snap = client(args).snapshot_create(args.name, args.snapshot, memory=args.memory,
                                        template=args.template)
    return out(args, snap, f"snapshot {args.snapshot} of {args.name} taken"
                           f"{' with its running state' if snap['memory'] else ''}"
                           f"{' and its warm-start template' if snap.get('template') else ''}")


def cmd_list(args: argparse.Namespace) -> int:
    snaps = client(args).snapshot_list(args.name)
    return out(args, snaps, render.snapshot_tree(snaps))


def cmd_revert(args: argparse.Namespace) -> int:
    vm = client(args).snapshot_revert(args.name, args.snapshot)
    return out(args, vm, f"{args.name} reverted to {args.snapshot}; it is {render.state(vm)}")


def cmd_rm(args: argparse.Namespace) -> int:
    client(args).snapshot_rm(args.name, args.snapshot)
    return out(args, {"deleted": args.snapshot}, f"snapshot {args.snapshot} removed")


def register(sub: Any, pa: Parents) -> None:
    """Add ``snapshot`` and its verbs."""
    sp = sub.add_parser("snapshot", help="snapshots of a VM (a tree)", formatter_class=Formatter,
                        description="Named points a VM can go back to. With --memory a "
                                    "snapshot keeps the running state too, and reverting "
                                    "puts the guest back at that very moment.")
    ssub = sp.add_subparsers(dest="snapshot_command", metavar="COMMAND", required=True)
    for verb, func, help_, aliases in (
            ("create", cmd_create, "take a snapshot of a running, paused or stopped VM", ()),
            ("list", cmd_list, "list a VM's snapshots as a tree", ()),
            ("revert", cmd_revert, "go back to a snapshot (later changes are lost)", ()),
            ("rm", cmd_rm, "remove a snapshot", ("delete",))):
        p = command(ssub, pa, verb, func, help_, vm=False, aliases=aliases)
        p.add_argument("name", metavar="VM", help="the VM")
        if verb != "list":
            p.add_argument("snapshot", metavar="NAME", help="the snapshot")
        if verb == "create":
            p.add_argument("--memory", action="store_true",
                           help="keep the running state (RAM, devices) too")
            p.add_argument("--template", action="store_true",
                           help="with --memory: make the warm-start template now, so the "
                                "first 'run --from-snapshot' is as fast as the later ones")
