"""``corral create|run|start|pause|resume|shutdown|stop|reboot|save|restore|clone|export|
import|rm|list|show|console|logs``: the VM commands, each one named Client call."""

from __future__ import annotations

import sys
import time

from corral import errors
from corral.cli import render
from corral.cli.common import (
    Parents,
    client,
    command,
    command_result,
    each,
    out,
    transfer_progress,
)
from corral.cli.vmspec import add_spec_options, spec_from

TYPE_CHECKING = False  # typing is slow to import; the CLI must start in milliseconds
if TYPE_CHECKING:
    import argparse
    from typing import Any


def _state(args: argparse.Namespace, vm: Any) -> int:
    return out(args, vm, f"{vm['name']} is {render.state(vm)}")


def cmd_create(args: argparse.Namespace) -> int:
    vm = client(args).create(args.name, progress=transfer_progress("uploading"),
                             **spec_from(args))
    return out(args, vm, f"defined {vm['name']} ({render.brief(vm)}); boot it with "
                         f"'corral start {vm['name']}'")


def cmd_run(args: argparse.Namespace) -> int:
    if args.rm or args.command_argv:
        return _run_batch(args)
    if not args.name:
        raise errors.InvalidSpec("name", "give the new VM's name (or --rm -- CMD for a batch "
                                         "VM)")
    t0 = time.monotonic()
    if args.pool:
        vm = client(args).pool_take(args.pool, args.name, pool_only=args.pool_only,
                                    timeout=args.timeout)
        how = "from pool" if vm["pool"]["hit"] else "warm-started (pool empty) for"
        return out(args, vm, f"{vm['name']} is {render.state(vm)} after "
                             f"{time.monotonic() - t0:.3f} s, {how} {args.pool}")
    vm = client(args).create(args.name, start=True, wait=not args.no_wait,
                             timeout=args.timeout, queue=not args.no_queue,
                             progress=transfer_progress("uploading"), **spec_from(args))
    return out(args, vm, f"{vm['name']} is {render.state(vm)} after "
                         f"{time.monotonic() - t0:.2f} s ({render.brief(vm)}); console: "
                         f"corral console {vm['name']}")


def _run_batch(args: argparse.Namespace) -> int:
    if not (args.rm and args.command_argv):
        raise errors.InvalidSpec("command", "a batch VM needs both --rm and a command after "
                                            "'--', e.g. corral run --rm -- uname -a")
    if args.pool:
        res = client(args, timeout=None).pool_batch(
            args.pool, args.command_argv, timeout=600.0 if args.timeout is None
            else args.timeout, pool_only=args.pool_only)
        return command_result(args, res)
    spec = spec_from(args)
    if args.name:
        spec["name"] = args.name
    # a batch may wait in the queue for long
    res = client(args, timeout=None).batch(
        args.command_argv, timeout=600.0 if args.timeout is None else args.timeout,
        queue=not args.no_queue, **spec)
    return command_result(args, res)


def _said(vm: Any) -> str:
    return f"{vm['name']} is {render.state(vm)}"


def cmd_start(args: argparse.Namespace) -> int:
    c = client(args)
    return each(args, lambda name: c.start(name, wait=args.wait, timeout=args.timeout,
                                           queue=not args.no_queue), _said)


def cmd_pause(args: argparse.Namespace) -> int:
    return each(args, client(args).pause, _said)


def cmd_resume(args: argparse.Namespace) -> int:
    return each(args, client(args).resume, _said)


def cmd_shutdown(args: argparse.Namespace) -> int:
    c = client(args)
    return each(args, lambda name: c.shutdown(name, timeout=args.timeout), _said)


def cmd_stop(args: argparse.Namespace) -> int:
    c = client(args)
    return each(args, lambda name: c.stop(name, force=args.force, timeout=args.timeout), _said)


def cmd_reboot(args: argparse.Namespace) -> int:
    return _state(args, client(args).reboot(args.name, wait=args.wait, timeout=args.timeout))


def cmd_save(args: argparse.Namespace) -> int:
    return _state(args, client(args).save(args.name, args.file,
                                          transfer_progress("downloading the state")))


def cmd_restore(args: argparse.Namespace) -> int:
    return _state(args, client(args).restore(args.name, wait=args.wait, timeout=args.timeout))


def cmd_rm(args: argparse.Namespace) -> int:
    c = client(args)

    def rm(name: str) -> dict[str, Any]:
        c.rm(name)
        return {"name": name, "destroyed": True}
    return each(args, rm, lambda done: f"destroyed {done['name']}")


def cmd_move(args: argparse.Namespace) -> int:
    vm = client(args).move(args.name, args.to)
    return out(args, vm, f"{vm['name']} is on {vm.get('host')}, {render.state(vm)}")


def cmd_list(args: argparse.Namespace) -> int:
    vms = client(args).list(host=args.host)
    return out(args, vms, render.vm_table(vms))


def cmd_show(args: argparse.Namespace) -> int:
    if args.explain:
        placed = client(args).placement(args.name)
        return out(args, placed, render.placement(placed))
    vm = client(args).get(args.name)
    return out(args, vm, render.vm_detail(vm))


def cmd_logs(args: argparse.Namespace) -> int:
    c = client(args)
    offset = -args.tail if args.tail else 0
    while True:
        chunk = c.logs(args.name, offset=offset)
        sys.stdout.write(chunk["data"])
        sys.stdout.flush()
        offset = chunk["offset"]
        if not args.follow:
            return 0
        time.sleep(0.25)


def cmd_console(args: argparse.Namespace) -> int:
    from corral.cli.console import attach

    vm = client(args).get(args.name)
    if not vm.get("console_socket"):
        raise errors.InvalidState(args.name, "attach to the console of", vm["state"],
                                  ["running", "paused"])
    return attach(str(vm["console_socket"]), args.name)


def cmd_clone(args: argparse.Namespace) -> int:
    src, _, snap = args.src.partition(":")
    vm = client(args).clone(src, args.new, args.full, snap or None)
    kind = "full copy" if args.full or not snap else "linked"
    return out(args, vm, f"{vm['name']} cloned from {args.src} ({kind}); "
                         f"start it with 'corral start {vm['name']}'")


def cmd_export(args: argparse.Namespace) -> int:
    res = client(args).export(args.name, args.file, live=args.live,
                              progress=transfer_progress(f"exporting {args.name}"))
    return out(args, res, f"exported {args.name} to {res['file']} ({res['size'] >> 20} MiB"
                          f"{', with its saved state' if res['saved'] else ''})")


def cmd_import(args: argparse.Namespace) -> int:
    vm = client(args).import_vm(args.file, args.name, transfer_progress("uploading"))
    return out(args, vm, f"imported {vm['name']}: it is {vm['state']}"
                         + ("; 'corral start' resumes it" if vm["state"] == "saved" else ""))


RUN_DESC = ("Create and start a VM in one step; returns when the guest agent answers. If the "
            "start fails, nothing is left behind. With --rm and a command after '--', run a "
            "batch VM: boot a fresh VM (waiting in the admission queue if the host is full), "
            "run the command in it, print its output, exit with its exit code, and destroy "
            "the VM.")


def _timeout(p: argparse.ArgumentParser, help_: str = "readiness timeout (default 120)"
             ) -> None:
    p.add_argument("--timeout", type=float, metavar="S", help=help_)


def _lifecycle(sub: Any, pa: Parents) -> None:
    p = command(sub, pa, "create", cmd_create, "define a VM (does not boot it)",
                "Define a VM: allocate its disks and NICs and record it. Boot it with "
                "'corral start'. NAME: 1-32 of a-z, 0-9 and '-'.")
    add_spec_options(p)
    p = command(sub, pa, "run", cmd_run, "create a VM and start it, waiting until it is ready",
                RUN_DESC, vm=False)
    p.add_argument("name", metavar="NAME", nargs="?", help="the VM's name (optional with --rm)")
    add_spec_options(p)
    p.add_argument("--rm", action="store_true", help="batch: destroy the VM after the command")
    p.add_argument("--no-queue", action="store_true",
                   help="fail at once when the host is full instead of waiting")
    p.add_argument("command_argv", nargs="*", metavar="-- CMD [ARG ...]",
                   help="with --rm: the command to run in the guest")
    p.add_argument("--wait", action="store_true",
                   help="wait until the guest is ready (what run always does; accepted so "
                        "that 'run --wait' works like 'start --wait')")
    p.add_argument("--no-wait", action="store_true", help="return once QEMU runs")
    p.add_argument("--from-snapshot", metavar="VM:SNAPSHOT",
                   help="warm start: begin as a copy of a memory snapshot instead of booting")
    p.add_argument("--pool", metavar="POOL",
                   help="take a ready VM from a warm pool (see 'corral pool'); a warm start "
                        "of the pool's snapshot when it is empty")
    p.add_argument("--pool-only", action="store_true",
                   help="with --pool: wait for the pool's next VM instead of a warm start")
    _timeout(p)
    p = command(sub, pa, "start", cmd_start,
                "boot a defined or stopped VM (queued if the host is full)", many=True)
    p.add_argument("--no-queue", action="store_true",
                   help="fail at once when the host is full instead of waiting")
    p.add_argument("--wait", action="store_true",
                   help="return when the guest is ready (its agent answered)")
    _timeout(p)
    command(sub, pa, "pause", cmd_pause, "freeze a running VM's vCPUs", many=True)
    command(sub, pa, "resume", cmd_resume, "let a paused VM run again", many=True)
    p = command(sub, pa, "shutdown", cmd_shutdown, "power a VM off gracefully",
                "Ask the guest to power off through its agent (or the ACPI power button when "
                "it has none); force it off after --timeout seconds.", many=True)
    _timeout(p, "seconds before forcing (60)")
    p = command(
        sub, pa,
        name="stop",
        func=cmd_stop, help_="stop a VM (--force: at once, like pulling the plug)", many=True)
    p.add_argument("--force", action="store_true", help="stop at once instead of shutting down")
    _timeout(p, "without --force: seconds before forcing (60)")
    p = command(sub, pa, "reboot", cmd_reboot, "reboot a VM (agent, else hard reset)")
    p.add_argument("--wait", action="store_true", help="return when the guest is ready again")
    _timeout(p)


def _state_and_copies(sub: Any, pa: Parents) -> None:
    p = command(sub, pa, "save", cmd_save, "save a VM's whole state to a file and stop it",
                "Pause the guest, write its memory and device state to its state file in the "
                "VM's directory (under a temporary name, synced, then renamed) and end its "
                "QEMU; the VM becomes 'saved'. 'corral restore' (or 'corral start') brings it "
                "back exactly where it was.")
    p.add_argument("--file", metavar="F", help="also download a copy of the state to F "
                                               "(written by the CLI with your rights)")
    p = command(sub, pa, "restore", cmd_restore, "bring a saved VM back where it was")
    p.add_argument("--wait", action="store_true", help="return when the guest agent answers")
    _timeout(p)
    p = command(sub, pa, "clone", cmd_clone, "define a new VM as a clone of a VM or of a "
                "snapshot", "Clone SRC (a stopped VM: a full copy of its disks) or "
                "SRC:SNAPSHOT (linked by default: qcow2 overlays on the snapshot's frozen disks; "
                "--full copies them). The clone gets its own name, MACs and state file.",
                vm=False)
    p.add_argument("src", metavar="SRC[:SNAPSHOT]")
    p.add_argument("new", metavar="NEW")
    p.add_argument("--full", action="store_true", help="independent copies of the disks")
    p = command(sub, pa, "export", cmd_export, "write a stopped or saved VM into one file",
                "Write the VM's spec, disks, snapshots and saved state (if it is saved) into "
                "one file, with a checksum for each part. Save or stop it first, or give "
                "--live. The daemon sends the bytes; the CLI writes FILE with your rights.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--live", action="store_true", help="export a running VM too")
    p = command(sub, pa, "import", cmd_import, "recreate a VM from an export file",
                "Recreate a VM from a file made by 'corral export', on this or another data "
                "directory. The CLI reads FILE with your rights and sends it; the daemon "
                "checks it whole before anything is created.", vm=False)
    p.add_argument("file", metavar="FILE")
    p.add_argument("--name", metavar="NAME", help="import under another name (new MACs)")


def register(sub: Any, pa: Parents) -> None:
    """Add the VM commands."""
    _lifecycle(sub, pa)
    _state_and_copies(sub, pa)
    command(sub, pa, "rm", cmd_rm, "stop a VM if it runs and remove all it owns",
            aliases=("destroy", "delete"), many=True)
    p = command(sub, pa, "move", cmd_move, "move a VM that does not run to another host",
                "Move a defined, stopped, saved or crashed VM to another host of the "
                "cluster: its disks, snapshots and saved state are copied over the hosts' "
                "TLS API, and a saved VM resumes there. (Running VMs: live migration is not "
                "built yet.)")
    p.add_argument("--to", required=True, metavar="HOST", help="the host to move it to")
    p = command(sub, pa, "list", cmd_list, "list VMs (in a cluster: every host's, with HOST)",
                vm=False)
    p.add_argument("--host", metavar="NAME", help="only the VMs of this cluster host")
    p = command(sub, pa, "show", cmd_show,
                "show one VM: state, host, accelerator, pid, uptime, boot time")
    p.add_argument("--explain", action="store_true",
                   help="in a cluster: why each host was or was not chosen for it")
    command(sub, pa, "console", cmd_console, "attach to a VM's serial console (Ctrl-] detaches)",
            js=False)
    p = command(sub, pa, "logs", cmd_logs, "print a VM's serial log", js=False)
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new output")
    p.add_argument("--tail", type=int, metavar="BYTES", help="start this many bytes from the end")
