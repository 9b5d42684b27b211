"""The ``corral`` command: a thin client of the daemon (see ``corral --help``).

Only the standard library is imported on the path of ordinary commands, so ``corral list``
or ``corral pause`` costs a few tens of milliseconds; ``serve`` and ``image build`` import
their heavier parts when they run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from corral import errors
from corral.cli import render

TYPE_CHECKING = False  # typing is slow to import; the CLI must start in milliseconds
if TYPE_CHECKING:
    from typing import Any

EPILOG = """\
examples:
  corral serve &                          start the daemon (CORRAL_HOME picks the data dir)
  corral image build tiny                 build the default guest image from Debian packages
  corral run web --memory 256M            create and boot a VM, return when it is ready
  corral list                             all VMs and their states
  corral show web --json                  one VM, as JSON for scripts
  corral pause web; corral resume web
  corral console web                      the serial console (Ctrl-] detaches)
  corral shutdown web; corral destroy web

environment:
  CORRAL_HOME    data directory (default /var/lib/corral as root, else ~/.local/share/corral)
  CORRAL_SOCKET  the daemon's socket (default $CORRAL_HOME/corral.sock)
  CORRAL_ACCEL   force the accelerator: kvm or tcg (default: detected)

exit status: 0 ok, 2 invalid input, 3 not found, 4 already exists, 5 wrong state,
6 timeout, 7 guest agent error, 8 daemon not running, 9 no capacity, 10 needs root,
1 other errors.
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=100)


def _client(args: argparse.Namespace) -> Any:
    from corral.client import Client

    return Client(args.socket)


def _print(args: argparse.Namespace, data: Any, human: str | None = None) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True))
    elif human is not None:
        print(human)


def _spec_from(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if getattr(args, "from_snapshot", None):
        spec["from_snapshot"] = args.from_snapshot
    for key in ("image", "cpus", "memory", "kernel", "initrd", "cmdline", "machine", "arch",
                "hostname"):
        value = getattr(args, key, None)
        if value is not None:
            spec[key] = value
    if args.disk:
        spec["disks"] = [render.parse_disk(d) for d in args.disk]
    if args.nic is not None:
        spec["nics"] = [] if args.nic == ["none"] else [render.parse_nic(n) for n in args.nic]
    for key in ("owner", "priority", "expected_runtime", "cpu_weight", "cpu_max"):
        value = getattr(args, key, None)
        if value is not None:
            spec[key] = value
    if getattr(args, "user_data", None):
        spec["user_data"] = render.read_text_file("user-data", args.user_data)
    if getattr(args, "ssh_key", None):
        spec["ssh_keys"] = [render.read_text_file("ssh-key", f).strip() for f in args.ssh_key]
    if getattr(args, "timeslice", False):
        spec["timeslice"] = True
    if getattr(args, "pin", None):
        spec["pin"] = render.parse_cpus(args.pin)
    return spec


def cmd_create(args: argparse.Namespace) -> int:
    vm = _client(args).create(args.name, **_spec_from(args))
    _print(args, vm, f"defined {vm['name']} ({render.brief(vm)}); boot it with "
                     f"'corral start {vm['name']}'")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if args.rm or args.command_argv:
        return _run_batch(args)
    if not args.name:
        raise errors.InvalidSpec("name", "give the new VM's name (or --rm -- CMD for a batch "
                                         "VM)")
    t0 = time.monotonic()
    vm = _client(args).create(args.name, start=True, wait=not args.no_wait,
                              timeout=args.timeout, queue=not args.no_queue,
                              **_spec_from(args))
    _print(args, vm, f"{vm['name']} is {render.state(vm)} after {time.monotonic() - t0:.2f} s"
                     f" ({render.brief(vm)}); console: corral console {vm['name']}")
    return 0


def _exit_status(res: dict[str, Any]) -> int:
    """A guest command's exit status as a shell gives it: 128+N when killed by signal N."""
    if res.get("signal"):
        return 128 + int(res["signal"])
    return int(res.get("exitcode") or 0)


def _command_result(args: argparse.Namespace, res: dict[str, Any]) -> int:
    """Print a finished guest command's output (or all of it as JSON); return its status."""
    if args.json:
        res["stdout"] = res["stdout"].decode(errors="replace")
        res["stderr"] = res["stderr"].decode(errors="replace")
        _print(args, res)
    else:
        sys.stdout.buffer.write(res["stdout"])
        sys.stdout.flush()
        sys.stderr.buffer.write(res["stderr"])
        sys.stderr.flush()
    return _exit_status(res)


def _run_batch(args: argparse.Namespace) -> int:
    if not (args.rm and args.command_argv):
        raise errors.InvalidSpec("command", "a batch VM needs both --rm and a command after "
                                            "'--', e.g. corral run --rm -- uname -a")
    spec = _spec_from(args)
    if args.name:
        spec["name"] = args.name
    from corral.client import Client

    client = Client(args.socket, timeout=None)  # a batch may wait in the queue for long
    res = client.batch(args.command_argv, timeout=args.timeout or 600.0,
                       queue=not args.no_queue, **spec)
    return _command_result(args, res)


def cmd_queue(args: argparse.Namespace) -> int:
    entries = _client(args).queue()
    _print(args, entries, render.queue_table(entries))
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    print(json.dumps(_client(args).trace(), indent=1))
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    vm = _client(args).start(args.name, wait=args.wait, timeout=args.timeout,
                             queue=not args.no_queue)
    _print(args, vm, f"{vm['name']} is {render.state(vm)}")
    return 0


def _simple(op: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        client = _client(args)
        kwargs: dict[str, Any] = {}
        if op in ("shutdown", "stop") and args.timeout is not None:
            kwargs["timeout"] = args.timeout
        if op == "stop":
            kwargs["force"] = args.force
        if op in ("reboot", "restore"):
            kwargs.update(wait=args.wait, timeout=args.timeout)
        if op == "save" and args.file:
            kwargs["file"] = args.file
        vm = getattr(client, op)(args.name, **kwargs)
        _print(args, vm, f"{vm['name']} is {render.state(vm)}")
        return 0
    return run


def cmd_destroy(args: argparse.Namespace) -> int:
    _client(args).destroy(args.name)
    _print(args, {"name": args.name, "destroyed": True}, f"destroyed {args.name}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    vms = _client(args).list()
    _print(args, vms, render.vm_table(vms))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    vm = _client(args).get(args.name)
    _print(args, vm, render.vm_detail(vm))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    client = _client(args)
    offset = -args.tail if args.tail else 0
    while True:
        out = client.logs(args.name, offset=offset)
        sys.stdout.write(out["data"])
        sys.stdout.flush()
        offset = out["offset"]
        if not args.follow:
            return 0
        time.sleep(0.25)


def cmd_console(args: argparse.Namespace) -> int:
    from corral.cli.console import attach

    vm = _client(args).get(args.name)
    if not vm.get("console_socket"):
        raise errors.InvalidState(args.name, "attach to the console of", vm["state"],
                                  ["running", "paused"])
    return attach(vm["console_socket"], args.name)


def cmd_exec(args: argparse.Namespace) -> int:
    command = args.command_argv
    if not command:
        raise errors.InvalidSpec("command", "give the command to run after '--', e.g. "
                                            f"corral exec {args.name} -- uname -a")
    stdin = None if sys.stdin.isatty() or not args.stdin else sys.stdin.buffer.read()
    if not args.json:  # stream the output as the command writes it
        end: dict[str, Any] = {}
        for event in _client(args).exec_stream(args.name, command, args.timeout, stdin):
            for key, out in (("stdout", sys.stdout), ("stderr", sys.stderr)):
                if key in event:
                    out.buffer.write(event[key])
                    out.flush()
            end = event
        return _exit_status(end)
    res = _client(args).exec(args.name, command, timeout=args.timeout, stdin=stdin)
    return _command_result(args, res)


def cmd_cp(args: argparse.Namespace) -> int:
    from corral.cli.files import copy

    return copy(_client(args), args.src, args.dest, args.json)


def cmd_ip(args: argparse.Namespace) -> int:
    ifaces = _client(args).addresses(args.name)
    _print(args, ifaces, "\n".join(ip for i in ifaces for ip in i["ipv4"]))
    return 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    c = _client(args)
    if args.snapshot_command == "create":
        snap = c.snapshot_create(args.name, args.snapshot, memory=args.memory)
        _print(args, snap, f"snapshot {args.snapshot} of {args.name} taken"
                           f"{' with its running state' if snap['memory'] else ''}")
    elif args.snapshot_command == "list":
        snaps = c.snapshot_list(args.name)
        _print(args, snaps, render.snapshot_tree(snaps))
    elif args.snapshot_command == "revert":
        vm = c.snapshot_revert(args.name, args.snapshot)
        _print(args, vm, f"{args.name} reverted to {args.snapshot}; it is {render.state(vm)}")
    else:
        c.snapshot_delete(args.name, args.snapshot)
        _print(args, {"deleted": args.snapshot}, f"snapshot {args.snapshot} removed")
    return 0


def cmd_disk(args: argparse.Namespace) -> int:
    c = _client(args)
    verb = args.disk_command
    if verb == "create":
        disk = c.disk_create(args.name, args.size, args.format, args.source)
        _print(args, disk, f"disk {disk['name']} created: {disk['path']}")
    elif verb == "list":
        disks = c.disk_list()
        _print(args, disks, render.disk_table(disks))
    elif verb == "resize":
        disk = c.disk_resize(args.name, args.size)
        _print(args, disk, f"disk {disk['name']} is now {disk['size_bytes'] >> 20} MiB")
    else:
        c.disk_delete(args.name)
        _print(args, {"deleted": args.name}, f"disk {args.name} removed")
    return 0


def cmd_attach_disk(args: argparse.Namespace) -> int:
    iops = args.iops
    bps = None
    if args.bps:
        from corral.domain.sizes import parse_size

        bps = parse_size("bps", args.bps, default_unit="K") if not args.bps.isdigit() \
            else int(args.bps)
    vm = _client(args).attach_disk(args.name, args.disk, args.readonly, iops, bps)
    _print(args, vm, f"disk {args.disk} attached to {args.name}")
    return 0


def cmd_detach_disk(args: argparse.Namespace) -> int:
    vm = _client(args).detach_disk(args.name, args.disk)
    _print(args, vm, f"disk {args.disk} detached from {args.name}")
    return 0


def cmd_clone(args: argparse.Namespace) -> int:
    src, _, snap = args.src.partition(":")
    vm = _client(args).clone(src, args.new, args.full, snap or None)
    kind = "full copy" if args.full or not snap else "linked"
    _print(args, vm, f"{vm['name']} cloned from {args.src} ({kind}); "
                     f"start it with 'corral start {vm['name']}'")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    out = _client(args).export(args.name, args.file)
    _print(args, out, f"exported {args.name} to {out['file']} ({out['size'] >> 20} MiB"
                      f"{', with its saved state' if out['saved'] else ''})")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    vm = _client(args).import_vm(args.file, args.name)
    _print(args, vm, f"imported {vm['name']}: it is {vm['state']}"
                     + ("; 'corral start' resumes it" if vm["state"] == "saved" else ""))
    return 0


def cmd_host_info(args: argparse.Namespace) -> int:
    info = _client(args).host_info()
    _print(args, info, render.host(info))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from corral import daemon

    daemon.main(Path(args.socket) if args.socket else None)
    return 0


def cmd_image_build(args: argparse.Namespace) -> int:
    from corral.cli.images import build

    return build(args)


def cmd_image_import(args: argparse.Namespace) -> int:
    from corral.cli.images import import_

    return import_(args)


def cmd_image_rm(args: argparse.Namespace) -> int:
    _client(args).request("DELETE", f"/images/{args.name}")
    _print(args, {"deleted": args.name}, f"image {args.name} removed")
    return 0


def cmd_image_list(args: argparse.Namespace) -> int:
    from corral.cli.images import list_images

    return list_images(args)


def _add_spec_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("virtual hardware")
    g.add_argument("--image", help="guest image to boot (default: tiny)")
    g.add_argument("--cpus", type=int, metavar="N", help="number of vCPUs (default: 1)")
    g.add_argument("--memory", metavar="SIZE", help="memory, e.g. 256M or 2G (default: 256M)")
    g.add_argument("--machine", choices=["q35", "microvm", "virt"],
                   help="machine type (default: the image's, else q35)")
    g.add_argument("--arch", choices=["x86_64", "aarch64"],
                   help="guest architecture (default: the image's; aarch64 runs under TCG)")
    g.add_argument("--kernel", metavar="FILE", help="boot this kernel instead of an image")
    g.add_argument("--initrd", metavar="FILE", help="initrd for --kernel")
    g.add_argument("--cmdline", metavar="ARGS", help="kernel command line for --kernel")
    g.add_argument("--disk", action="append", metavar="SPEC",
                   help="add a disk: SIZE (new qcow2, e.g. 1G), or path=FILE[,format=raw]"
                        "[,readonly=on], or size=SIZE[,format=raw]; repeatable")
    g.add_argument("--nic", action="append", metavar="SPEC",
                   help="a NIC: user[,mac=..][,hostfwd=tcp:8022-:22] (user-mode networking, "
                        "the default), NET[,mac=..][,ip=..] (a port on network NET), or none; "
                        "repeatable")
    c = p.add_argument_group("cloud-init (images that run it, e.g. debian or imported ones)")
    c.add_argument("--user-data", metavar="FILE", help="cloud-init user-data for a NoCloud seed")
    c.add_argument("--ssh-key", action="append", metavar="FILE",
                   help="a public key for the default user; repeatable")
    c.add_argument("--hostname", metavar="H", help="the guest's host name (default: NAME)")
    s = p.add_argument_group("scheduling")
    s.add_argument("--owner", metavar="NAME", help="who it belongs to (fair sharing)")
    s.add_argument("--priority", type=int, metavar="N", help="queue priority (higher first)")
    s.add_argument("--expected-runtime", metavar="DURATION",
                   help="how long it will run, e.g. 30s or 5m (shortest-job-first, backfill)")
    s.add_argument("--timeslice", action="store_true",
                   help="share CPU slots round robin with other time-sliced VMs")
    s.add_argument("--cpu-weight", type=int, metavar="W", help="relative CPU share 1-10000 "
                                                                "(100 is normal)")
    s.add_argument("--cpu-max", metavar="PCT", help="cap CPU use, e.g. 50%% of one CPU")
    s.add_argument("--pin", metavar="CPUS", help="pin vCPU threads to host CPUs, e.g. 0,1")


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
        self.names: set[str] = set()

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        self.names.add(name)
        if self.only is None or name == self.only:
            return self.real.add_parser(name, **kwargs)
        return _Null()


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``corral`` parser; with ``only``, just that command's part of it is built (a
    name it does not know builds everything, so argparse can list the choices)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", metavar="PATH", default=os.environ.get("CORRAL_SOCKET"),
                        help="the daemon's unix socket (default: $CORRAL_HOME/corral.sock)")
    js = argparse.ArgumentParser(add_help=False)
    js.add_argument("--json", action="store_true", help="print JSON for scripts")

    parser = argparse.ArgumentParser(
        prog="corral", formatter_class=_Formatter, epilog=EPILOG,
        description="Corral manages virtual machines on QEMU: create, start, pause, resume, "
                    "shut down and destroy them, and reach their consoles.")
    parser.add_argument("--version", action="version", version="corral 0.1.0")
    real_sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub: Any = _OnlySub(real_sub, only)

    def add(name: str, func: Any, help_: str, desc: str = "", parents: tuple[Any, ...] = (),
            vm: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=desc or help_,
                           formatter_class=_Formatter, parents=[common, *parents])
        if vm:
            p.add_argument("name", metavar="NAME", help="the VM's name")
        p.set_defaults(func=func)
        return p  # type: ignore[no-any-return]

    p = add("serve", cmd_serve, "run the daemon (VMs outlive it; it re-adopts them)",
            "Run the Corral daemon in the foreground. It owns the store, one QMP connection "
            "per VM and the REST API on a unix socket. Stopping it leaves VMs running; the "
            "next daemon re-adopts them.", vm=False)

    p = add("create", cmd_create, "define a VM (does not boot it)",
            "Define a VM: allocate its disks and NICs and record it. Boot it with "
            "'corral start'. NAME: 1-32 of a-z, 0-9 and '-'.", (js,))
    _add_spec_options(p)

    p = sub.add_parser(
        "run", help="create a VM and start it, waiting until it is ready",
        description="Create and start a VM in one step; returns when the guest agent answers. "
                    "If the start fails, nothing is left behind. With --rm and a command after "
                    "'--', run a batch VM: boot a fresh VM (waiting in the admission queue if "
                    "the host is full), run the command in it, print its output, exit with "
                    "its exit code, and destroy the VM.",
        formatter_class=_Formatter, parents=[common, js])
    p.add_argument("name", metavar="NAME", nargs="?", help="the VM's name (optional with --rm)")
    p.set_defaults(func=cmd_run)
    _add_spec_options(p)
    p.add_argument("--rm", action="store_true", help="batch: destroy the VM after the command")
    p.add_argument("--no-queue", action="store_true",
                   help="fail at once when the host is full instead of waiting")
    p.add_argument("command_argv", nargs="*", metavar="-- CMD [ARG ...]",
                   help="with --rm: the command to run in the guest")
    p.add_argument("--no-wait", action="store_true", help="return once QEMU runs")
    p.add_argument("--from-snapshot", metavar="VM:SNAPSHOT",
                   help="warm start: begin as a copy of a memory snapshot instead of booting")
    p.add_argument("--timeout", type=float, metavar="S", help="readiness timeout (default 120)")

    p = add("start", cmd_start, "boot a defined or stopped VM (queued if the host is full)",
            parents=(js,))
    p.add_argument("--no-queue", action="store_true",
                   help="fail at once when the host is full instead of waiting")
    p.add_argument("--wait", action="store_true",
                   help="return when the guest is ready (its agent answered)")
    p.add_argument("--timeout", type=float, metavar="S", help="readiness timeout (default 120)")

    add("pause", _simple("pause"), "freeze a running VM's vCPUs", parents=(js,))
    add("resume", _simple("resume"), "let a paused VM run again", parents=(js,))
    p = add("shutdown", _simple("shutdown"), "power a VM off gracefully",
            "Ask the guest to power off through its agent (or the ACPI power button when it "
            "has none); force it off after --timeout seconds.", (js,))
    p.add_argument("--timeout", type=float, metavar="S", help="seconds before forcing (60)")
    p = add("stop", _simple("stop"), "stop a VM (--force: at once, like pulling the plug)",
            parents=(js,))
    p.add_argument("--force", action="store_true", help="stop at once instead of shutting down")
    p.add_argument("--timeout", type=float, metavar="S", help="without --force: seconds "
                                                               "before forcing (60)")
    p = add("reboot", _simple("reboot"), "reboot a VM (agent, else hard reset)", parents=(js,))
    p.add_argument("--wait", action="store_true", help="return when the guest is ready again")
    p.add_argument("--timeout", type=float, metavar="S", help="readiness timeout (default 120)")
    p = add("save", _simple("save"), "save a VM's whole state to a file and stop it",
            "Pause the guest, write its memory and device state to a file (written under a "
            "temporary name, synced, then renamed) and end its QEMU; the VM becomes 'saved'. "
            "'corral restore' (or 'corral start') brings it back exactly where it was.", (js,))
    p.add_argument("--file", metavar="F", help="where to write the state (default: managed, "
                                               "in the VM's directory)")
    p = add("restore", _simple("restore"), "bring a saved VM back where it was", parents=(js,))
    p.add_argument("--wait", action="store_true", help="return when the guest agent answers")
    p.add_argument("--timeout", type=float, metavar="S", help="readiness timeout (default 120)")
    p = add("clone", cmd_clone, "define a new VM as a clone of a VM or of a snapshot",
            "Clone SRC (a stopped VM: a full copy of its disks) or SRC:SNAPSHOT (linked by "
            "default: qcow2 overlays on the snapshot's frozen disks; --full copies them). "
            "The clone gets its own name, MACs and state file.", (js,), vm=False)
    p.add_argument("src", metavar="SRC[:SNAPSHOT]")
    p.add_argument("new", metavar="NEW")
    p.add_argument("--full", action="store_true", help="independent copies of the disks")
    p = add("export", cmd_export, "write a stopped or saved VM into one file",
            "Write the VM's spec, disks, snapshots and saved state (if it is saved) into one "
            "file, with a checksum for each part. Save or stop it first.", (js,))
    p.add_argument("file", metavar="FILE")
    p = add("import", cmd_import, "recreate a VM from an export file",
            "Recreate a VM from a file made by 'corral export', on this or another data "
            "directory. The file is checked whole before anything is created.", (js,),
            vm=False)
    p.add_argument("file", metavar="FILE")
    p.add_argument("--name", metavar="NAME", help="import under another name (new MACs)")
    add("destroy", cmd_destroy, "stop a VM if it runs and remove all it owns", parents=(js,))
    add("list", cmd_list, "list VMs", parents=(js,), vm=False)
    add("queue", cmd_queue, "VMs waiting for capacity, in the order they will start",
        parents=(js,), vm=False)
    add("trace", cmd_trace, "every start request's arrival, start and end as JSON (for "
                            "'corral simulate --trace')", vm=False)
    add("show", cmd_show, "show one VM: state, accelerator, pid, uptime, boot time",
        parents=(js,))
    add("console", cmd_console, "attach to a VM's serial console (Ctrl-] detaches)")
    p = add("logs", cmd_logs, "print a VM's serial log")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new output")
    p.add_argument("--tail", type=int, metavar="BYTES", help="start this many bytes from the end")

    p = add("exec", cmd_exec, "run a command in the guest, print its output, exit with its code",
            "Run a command inside the guest through its agent. Its stdout and stderr are "
            "printed when it ends, and corral exits with its exit code (128+N when killed by "
            "signal N).", (js,))
    p.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="give up after S seconds (default 60)")
    p.add_argument("--stdin", action="store_true", help="send corral's stdin to the command")
    p.add_argument("command_argv", nargs="*", metavar="-- CMD [ARG ...]",
                   help="the command and its arguments, after '--'")
    p = add("cp", cmd_cp, "copy files between the host and a guest",
            "Copy a file into a guest (corral cp FILE VM:/path) or out of one (corral cp "
            "VM:/path FILE). Binary-safe, in 1 MiB chunks, checked with SHA-256 on both "
            "sides. Only the local path you name is written.", (js,), vm=False)
    p.add_argument("src", metavar="SRC", help="FILE or VM:/path")
    p.add_argument("dest", metavar="DEST", help="VM:/path or FILE (a directory keeps the name)")
    add("ip", cmd_ip, "print the guest's IPv4 addresses (from its agent)", parents=(js,))

    dp = sub.add_parser("disk", help="named disks (create, list, resize, rm)",
                        formatter_class=_Formatter,
                        description="Disks that live on their own and attach to one VM at a "
                                    "time ('corral attach-disk'); hot-plugged into running "
                                    "q35 VMs.")
    dsub = dp.add_subparsers(dest="disk_command", metavar="COMMAND", required=True)
    p = dsub.add_parser("create", help="make a disk", parents=[common, js],
                        formatter_class=_Formatter, description="Make a blank disk, or a "
                        "linked clone (qcow2 overlay) of an image's disk with --from.")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--size", metavar="SIZE", help="e.g. 10G (a bare number is GiB)")
    p.add_argument("--format", choices=["qcow2", "raw"], default="qcow2")
    p.add_argument("--from", dest="source", metavar="IMAGE", help="clone this image's disk")
    p.set_defaults(func=cmd_disk)
    p = dsub.add_parser("list", help="list disks", parents=[common, js],
                        formatter_class=_Formatter)
    p.set_defaults(func=cmd_disk)
    p = dsub.add_parser("resize", help="grow a disk (also while attached)",
                        parents=[common, js], formatter_class=_Formatter)
    p.add_argument("name", metavar="NAME")
    p.add_argument("size", metavar="SIZE", help="the new size, e.g. 20G")
    p.set_defaults(func=cmd_disk)
    p = dsub.add_parser("rm", help="remove a disk (refused while attached)",
                        parents=[common, js], formatter_class=_Formatter)
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_disk)

    p = add("attach-disk", cmd_attach_disk, "attach a named disk (hot-plug when running)",
            "Attach a named disk to a VM. A running q35 VM gets it at once: the guest sees a "
            "new /dev/vdX.", (js,))
    p.add_argument("disk", metavar="DISK")
    p.add_argument("--readonly", action="store_true", help="attach read-only")
    p.add_argument("--iops", type=int, metavar="N", help="limit to N IO operations a second")
    p.add_argument("--bps", metavar="RATE", help="limit to RATE bytes a second (e.g. 2M)")
    p = add("detach-disk", cmd_detach_disk, "detach a named disk (hot-unplug when running)",
            parents=(js,))
    p.add_argument("disk", metavar="DISK")

    sp = sub.add_parser("snapshot", help="snapshots of a VM (a tree)", formatter_class=_Formatter,
                        description="Named points a VM can go back to. With --memory a "
                                    "snapshot keeps the running state too, and reverting "
                                    "puts the guest back at that very moment.")
    ssub = sp.add_subparsers(dest="snapshot_command", metavar="COMMAND", required=True)
    for verb, help_ in (("create", "take a snapshot of a running, paused or stopped VM"),
                        ("list", "list a VM's snapshots as a tree"),
                        ("revert", "go back to a snapshot (later changes are lost)"),
                        ("rm", "remove a snapshot")):
        p = ssub.add_parser(verb, help=help_, description=help_, parents=[common, js],
                            formatter_class=_Formatter)
        p.add_argument("name", metavar="VM", help="the VM")
        if verb != "list":
            p.add_argument("snapshot", metavar="NAME", help="the snapshot")
        if verb == "create":
            p.add_argument("--memory", action="store_true",
                           help="keep the running state (RAM, devices) too")
        p.set_defaults(func=cmd_snapshot)

    from corral.cli import models as model_commands

    model_commands.register(sub, common, js)
    from corral.cli import networks as network_commands

    network_commands.register(sub, common, js)

    hp = sub.add_parser("host", help="facts about this host", formatter_class=_Formatter)
    hsub = hp.add_subparsers(dest="host_command", metavar="COMMAND", required=True)
    p = hsub.add_parser("info", help="CPUs, memory, accelerator in use and why",
                        parents=[common, js], formatter_class=_Formatter)
    p.set_defaults(func=cmd_host_info)

    ip = sub.add_parser("image", help="guest images", formatter_class=_Formatter)
    isub = ip.add_subparsers(dest="image_command", metavar="COMMAND", required=True)
    p = isub.add_parser("build", help="build a guest image from Debian packages",
                        description="Build a guest image from Debian's packages (needs root "
                                    "and apt). 'tiny': Debian's cloud kernel, busybox and the "
                                    "QEMU guest agent in an initramfs, booting in about 2 s "
                                    "under TCG; it also writes 'tiny-disk', the same system on "
                                    "an ext4 disk (files survive reboots). 'tiny-arm64': the "
                                    "same for aarch64 guests. 'debian': a real Debian bookworm "
                                    "(systemd, cloud-init, openssh) made with debootstrap, "
                                    "about two minutes.", parents=[js],
                        formatter_class=_Formatter)
    p.add_argument("name", choices=["tiny", "tiny-arm64", "debian"], help="which image")
    p.add_argument("--force", action="store_true", help="rebuild even if it exists")
    p.add_argument("--dest", metavar="DIR", help="image directory (default $CORRAL_HOME/images)")
    p.set_defaults(func=cmd_image_build)
    p = isub.add_parser("list", help="list built images", parents=[js],
                        formatter_class=_Formatter)
    p.set_defaults(func=cmd_image_list)
    p = isub.add_parser("import", help="import a qcow2 or raw disk image file",
                        description="Import a disk image (a distribution's cloud image, for "
                                    "one) as a Corral image. It is checked with qemu-img and "
                                    "refused when damaged or not a disk image; VMs made from "
                                    "it boot their own overlays of it.",
                        parents=[js], formatter_class=_Formatter)
    p.add_argument("name", metavar="NAME")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--agent", action="store_true",
                   help="the image runs qemu-guest-agent (Corral then waits for it)")
    p.add_argument("--root-device", choices=["virtio", "nvme"], default="virtio",
                   help="how the root disk is attached (default virtio)")
    p.add_argument("--dest", metavar="DIR", help="image directory (default $CORRAL_HOME/images)")
    p.set_defaults(func=cmd_image_import)
    p = isub.add_parser("rm", help="remove an image (refused while a VM uses it)",
                        parents=[common, js], formatter_class=_Formatter)
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_image_rm)
    parser._corral_names = sub.names  # type: ignore[attr-defined]
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    word = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(word)
    if word is None or word not in getattr(parser, "_corral_names", ()):
        parser = build_parser()
    tail: list[str] | None = None
    if "--" in argv:  # everything after '--' belongs to the guest command, options included
        cut = argv.index("--")
        argv, tail = argv[:cut], argv[cut + 1:]
    args = parser.parse_args(argv)
    if tail is not None:
        if not hasattr(args, "command_argv"):
            parser.error("'--' is only for 'corral exec NAME -- CMD' and 'corral run --rm'")
        args.command_argv = tail
    try:
        return int(args.func(args))
    except errors.CorralError as err:
        print(f"corral: error: {err.message}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
