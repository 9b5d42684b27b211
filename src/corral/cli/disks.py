"""``corral disk create|list|resize|rm``, ``attach-disk`` and ``detach-disk``."""

from __future__ import annotations

import argparse

from corral.cli import render
from corral.cli.common import Parents, client, command, out
from corral.cli.formatter import Formatter

TYPE_CHECKING = False  # typing is slow to import; the CLI must start in milliseconds
if TYPE_CHECKING:
    from typing import Any


def cmd_create(args: argparse.Namespace) -> int:
    disk = client(args).disk_create(args.name, args.size, args.format, args.source)
    return out(args, disk, f"disk {disk['name']} created: {disk['path']}")


def cmd_list(args: argparse.Namespace) -> int:
    disks = client(args).disk_list()
    return out(args, disks, render.disk_table(disks))


def cmd_resize(args: argparse.Namespace) -> int:
    disk = client(args).disk_resize(args.name, args.size)
    size = render.human_bytes(disk["size_bytes"] or 0)
    return out(args, disk, f"disk {disk['name']} is now {size}")


def cmd_rm(args: argparse.Namespace) -> int:
    client(args).disk_rm(args.name)
    return out(args, {"deleted": args.name}, f"disk {args.name} removed")


def cmd_attach(args: argparse.Namespace) -> int:
    bps = None
    if args.bps:
        from corral.domain.sizes import parse_size

        bps = int(args.bps) if args.bps.isdigit() else \
            parse_size("bps", args.bps, default_unit="K")
    vm = client(args).attach_disk(args.name, args.disk, args.readonly, args.iops, bps)
    return out(args, vm, f"disk {args.disk} attached to {args.name}")


def cmd_detach(args: argparse.Namespace) -> int:
    vm = client(args).detach_disk(args.name, args.disk)
    return out(args, vm, f"disk {args.disk} detached from {args.name}")


def register(sub: Any, pa: Parents) -> None:
    """Add ``disk`` and its verbs, ``attach-disk`` and ``detach-disk``."""
    dp = sub.add_parser("disk", help="named disks (create, list, resize, rm)",
                        formatter_class=Formatter,
                        description="Disks that live on their own and attach to one VM at a "
                                    "time ('corral attach-disk'); hot-plugged into running "
                                    "q35 VMs.")
    dsub = dp.add_subparsers(dest="disk_command", metavar="COMMAND", required=True)
    p = command(dsub, pa, "create", cmd_create, "make a disk", "Make a blank disk, or a linked "
                "clone (qcow2 overlay) of an image's disk with --from.", vm=False)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--size", metavar="SIZE", help="e.g. 10G (a bare number is GiB)")
    p.add_argument("--format", choices=["qcow2", "raw"], default="qcow2")
    p.add_argument("--from", dest="source", metavar="IMAGE", help="clone this image's disk")
    command(dsub, pa, "list", cmd_list, "list disks", vm=False)
    p = command(dsub, pa, "resize", cmd_resize, "grow a disk (also while attached)", vm=False)
    p.add_argument("name", metavar="NAME")
    p.add_argument("size", metavar="SIZE", help="the new size, e.g. 20G")
    p = command(dsub, pa, "rm", cmd_rm, "remove a disk (refused while attached)", vm=False,
                aliases=("delete",))
    p.add_argument("name", metavar="NAME")

    p = command(sub, pa, "attach-disk", cmd_attach, "attach a named disk (hot-plug when "
                "running)", "Attach a named disk to a VM. A running q35 VM gets it at once: "
                "the guest sees a new /dev/vdX.")
    p.add_argument("disk", metavar="DISK")
    p.add_argument("--readonly", action="store_true", help="attach read-only")
    p.add_argument("--iops", type=int, metavar="N", help="limit to N IO operations a second")
    p.add_argument("--bps", metavar="RATE", help="limit to RATE bytes a second (e.g. 2M)")
    p = command(sub, pa, "detach-disk", cmd_detach, "detach a named disk (hot-unplug when "
                "running)")
    p.add_argument("disk", metavar="DISK")
