"""The options that describe a new VM (``corral create`` and ``corral run``) and the spec
they make. Standard library only."""

from __future__ import annotations

from corral.cli import render

TYPE_CHECKING = False  # typing is slow to import; the CLI must start in milliseconds
if TYPE_CHECKING:
    import argparse
    from typing import Any

_PLAIN = ("image", "cpus", "memory", "kernel", "initrd", "cmdline", "machine", "arch",
          "hostname", "owner", "priority", "expected_runtime", "cpu_weight", "cpu_max", "host",
          "group")


def spec_from(args: argparse.Namespace) -> dict[str, Any]:
    """The create request's body (without the name) from the parsed options."""
    spec: dict[str, Any] = {}
    if getattr(args, "from_snapshot", None):
        spec["from_snapshot"] = args.from_snapshot
    for key in _PLAIN:
        value = getattr(args, key, None)
        if value is not None:
            spec[key] = value
    if args.disk:
        spec["disks"] = [render.parse_disk(d) for d in args.disk]
    if args.nic is not None:
        spec["nics"] = [] if args.nic == ["none"] else [render.parse_nic(n) for n in args.nic]
    if getattr(args, "user_data", None):
        spec["user_data"] = render.read_text_file("user-data", args.user_data)
    if getattr(args, "ssh_key", None):
        spec["ssh_keys"] = [render.read_text_file("ssh-key", f).strip() for f in args.ssh_key]
    if getattr(args, "timeslice", False):
        spec["timeslice"] = True
    if getattr(args, "pin", None):
        spec["pin"] = render.parse_cpus(args.pin)
    if getattr(args, "on", None):
        spec["on"] = _labels(args.on)
    if getattr(args, "anti_affinity", False):
        spec["anti_affinity"] = True
    if getattr(args, "ha", False):
        spec["ha"] = True
    return spec


def _labels(items: list[str]) -> dict[str, str]:
    from corral import errors

    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise errors.InvalidSpec("on", f"'{item}' is not LABEL=VALUE")
        out[key] = value
    return out


def add_spec_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("virtual hardware")
    g.add_argument("--image", help="guest image to boot (default: tiny)")
    g.add_argument("--cpus", type=int, metavar="N", help="number of vCPUs (default: 1)")
    g.add_argument("--memory", metavar="SIZE", help="memory, e.g. 256M or 2G (default: 256M)")
    g.add_argument("--machine", choices=["q35", "microvm", "virt"],
                   help="machine type (default: the image's, else q35)")
    g.add_argument("--arch", choices=["x86_64", "aarch64"],
                   help="guest architecture (default: the image's; aarch64 runs under TCG)")
    g.add_argument("--kernel", metavar="FILE", help="boot this kernel instead of an image "
                                                    "(read by the CLI and sent to the daemon)")
    g.add_argument("--initrd", metavar="FILE", help="initrd for --kernel (sent likewise)")
    g.add_argument("--cmdline", metavar="ARGS", help="kernel command line for --kernel")
    g.add_argument("--disk", action="append", metavar="SPEC",
                   help="add a disk: SIZE (new qcow2, e.g. 1G), size=SIZE[,format=raw], "
                        "file=IMAGE (a copy sent to the daemon, the VM's own), or path=FILE "
                        "(used in place: only inside the daemon's allowed host paths, setting "
                        "paths.allowed); options ,format=raw|qcow2 ,readonly=on; repeatable")
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
    c = p.add_argument_group("placement (a cluster of hosts)")
    c.add_argument("--host", metavar="NAME", help="on this host and no other")
    c.add_argument("--on", action="append", metavar="LABEL=VALUE",
                   help="only on hosts with this label (arch and accel are labels too); "
                        "repeatable")
    c.add_argument("--group", metavar="G", help="a placement group: its VMs share hosts")
    c.add_argument("--anti-affinity", action="store_true",
                   help="the --group's VMs never share a host")
    c.add_argument("--ha", action="store_true",
                   help="keep its files on the cluster's shared storage and restart it on "
                        "another host when its host is lost")
