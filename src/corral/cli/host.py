"""``corral serve``, ``config show``, ``host info|set|list|cordon|uncordon|drain``,
``cluster token``, ``queue``, ``trace`` and ``image build|list|import|rm``: the daemon, its
settings, the hosts and the images on them."""

from __future__ import annotations

import argparse
import json

from corral.cli import render
from corral.cli.common import Parents, client, command, out
from corral.cli.formatter import Formatter

TYPE_CHECKING = False  # typing is slow to import; the CLI must start in milliseconds
if TYPE_CHECKING:
    from typing import Any

IMAGE_BUILD_DESC = (
    "Build a guest image from Debian's packages (needs root and apt). 'tiny': Debian's cloud "
    "kernel, busybox and the QEMU guest agent in an initramfs, booting in about 2 s under "
    "TCG; it also writes 'tiny-disk', the same system on an ext4 disk (files survive "
    "reboots). 'tiny-arm64': the same for aarch64 guests. 'debian': a real Debian bookworm "
    "(systemd, cloud-init, openssh) made with debootstrap, about two minutes.")


def cmd_serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from corral import daemon, settings

    if args.config:
        settings.load_file(args.config)
    for item in args.set:
        key, sep, text = item.partition("=")
        if not sep:
            raise settings.SettingError("set", f"--set {item!r}: expected KEY=VALUE")
        settings.set_flag(key, text)
    if args.log_format:
        settings.set_flag("log.format", args.log_format, "--log-format")
    if args.socket:
        settings.set_flag("socket", args.socket, "--socket")
    if args.listen:
        settings.set_flag("api.listen", args.listen, "--listen")
    for key, flag, value in (("cluster.url", "--cluster", args.cluster),
                             ("cluster.host", "--name", args.name),
                             ("cluster.labels", "--labels", args.labels),
                             ("cluster.address", "--address", args.address)):
        if value is not None:
            settings.set_flag(key, value, flag)
    settings.table()  # every value must parse before the daemon starts
    daemon.main(Path(args.socket) if args.socket else None, args.listen)
    return 0


def _show_value(v: Any) -> str:
    if isinstance(v, list):
        return ":".join(str(x) for x in v) or "-"
    return "-" if v is None or v == "" else str(v).lower() if isinstance(v, bool) else str(v)


def _local_config(args: argparse.Namespace) -> tuple[Any, str]:
    """The settings a daemon started now would use (with ``--config``: that file's)."""
    from corral import settings

    if args.config:
        settings.load_file(args.config)
    path = settings.file_path()
    cfg = {"file": str(path) if path else None, "settings": settings.table()}
    return cfg, f"with {args.config}" if args.config else \
        "for a daemon started now (none is running)"


def cmd_config_show(args: argparse.Namespace) -> int:
    from corral.errors import DaemonUnavailable

    if args.config:
        cfg, where = _local_config(args)
    else:
        try:
            cfg, where = client(args).config(), "in force in the daemon"
        except DaemonUnavailable:
            cfg, where = _local_config(args)
    rows = [("KEY", "VALUE", "FROM", "")]
    rows += [(s["key"], _show_value(s["value"]), s["source"], "live" if s["live"] else "")
             for s in cfg["settings"]]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)
    head = f"settings {where}; configuration file: {cfg['file'] or 'none'}"
    return out(args, cfg, f"{head}\n{text}")


def cmd_host_set(args: argparse.Namespace) -> int:
    res = client(args).host_set(args.key, args.value)
    return out(args, res, f"{res['key']}: {_show_value(res['old'])} → "
                          f"{_show_value(res['value'])} (until the daemon restarts)")


def cmd_host_list(args: argparse.Namespace) -> int:
    hosts = client(args).hosts()
    return out(args, hosts, render.host_table(hosts))


def cmd_host_admin(args: argparse.Namespace) -> int:
    host = client(args).host_admin(args.host, args.host_command)
    return out(args, host, f"host {host['name']} is {host['state']}")


def cmd_cluster_token(args: argparse.Namespace) -> int:
    tok = client(args).join_token()
    return out(args, tok, f"{tok['token']}\n(join with: CORRAL_JOIN_TOKEN={tok['token']} "
                          f"corral serve --cluster {tok['cluster']})")


def cmd_host_info(args: argparse.Namespace) -> int:
    info = client(args).host_info()
    return out(args, info, render.host(info))


def cmd_queue(args: argparse.Namespace) -> int:
    entries = client(args).queue()
    return out(args, entries, render.queue_table(entries))


def cmd_trace(args: argparse.Namespace) -> int:
    print(json.dumps(client(args).trace(), indent=1))
    return 0


def cmd_image_build(args: argparse.Namespace) -> int:
    from corral.cli.images import build

    return build(args)


def cmd_image_import(args: argparse.Namespace) -> int:
    from corral.cli.images import import_

    return import_(args)


def cmd_image_list(args: argparse.Namespace) -> int:
    from corral.cli.images import list_images

    return list_images(args)


def cmd_image_rm(args: argparse.Namespace) -> int:
    client(args).image_rm(args.name)
    return out(args, {"deleted": args.name}, f"image {args.name} removed")


def _images(sub: Any, pa: Parents) -> None:
    ip = sub.add_parser("image", help="guest images", formatter_class=Formatter)
    isub = ip.add_subparsers(dest="image_command", metavar="COMMAND", required=True)
    p = isub.add_parser("build", help="build a guest image from Debian packages",
                        description=IMAGE_BUILD_DESC, parents=[pa.js], formatter_class=Formatter)
    p.add_argument("name", choices=["tiny", "tiny-arm64", "debian"], help="which image")
    p.add_argument("--force", action="store_true", help="rebuild even if it exists")
    p.add_argument("--dest", metavar="DIR", help="image directory (default $CORRAL_HOME/images)")
    p.set_defaults(func=cmd_image_build)
    p = isub.add_parser("list", help="list built images", parents=[pa.js],
                        formatter_class=Formatter)
    p.set_defaults(func=cmd_image_list)
    p = isub.add_parser("import", help="import a qcow2 or raw disk image file",
                        description="Import a disk image (a distribution's cloud image, for "
                                    "one) as a Corral image. The CLI reads FILE with your "
                                    "rights and sends it to the daemon, which checks it with "
                                    "qemu-img and refuses it when damaged, not a disk image, "
                                    "or naming other files (a backing file); VMs made from "
                                    "it boot their own overlays of it.",
                        parents=[pa.common, pa.js], formatter_class=Formatter)
    p.add_argument("name", metavar="NAME")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--agent", action="store_true",
                   help="the image runs qemu-guest-agent (Corral then waits for it)")
    p.add_argument("--root-device", choices=["virtio", "nvme"], default="virtio",
                   help="how the root disk is attached (default virtio)")
    p.set_defaults(func=cmd_image_import)
    p = command(isub, pa, "rm", cmd_image_rm, "remove an image (refused while a VM uses it)",
                vm=False)
    p.add_argument("name", metavar="NAME")


def register(sub: Any, pa: Parents) -> None:
    """Add ``serve``, ``config``, ``host``, ``queue``, ``trace`` and ``image``."""
    p = command(sub, pa, "serve", cmd_serve, "run the daemon (VMs outlive it; it re-adopts "
                "them)", "Run the Corral daemon in the foreground. It owns the store, one QMP "
                "connection per VM and the REST API on a unix socket (and, with --listen, the "
                "same API over TLS with tokens). Stopping it leaves VMs running; the next "
                "daemon re-adopts them. With --cluster it keeps its store in that PostgreSQL "
                "database and joins the cluster of hosts there (a new host of a cluster that "
                "has members needs CORRAL_JOIN_TOKEN from 'corral cluster token'). Settings "
                "come from their defaults, the configuration file, the environment and these "
                "flags, each overriding the one before ('corral config show' tells which).",
                js=False, vm=False)
    p.add_argument("--listen", metavar="ADDR:PORT", default=None,
                   help="also serve the API over TLS here, e.g. 0.0.0.0:8443 (the setting "
                        "api.listen; the certificate is made under the home on first "
                        "start unless api.tls_cert/api.tls_key name one)")
    p.add_argument("--config", metavar="FILE", help="the configuration file (TOML; default "
                   "$CORRAL_CONFIG, $CORRAL_HOME/corral.toml, else /etc/corral/corral.toml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting, over the file and the environment (repeatable)")
    p.add_argument("--log-format", choices=["text", "json"],
                   help="log lines as text, or as one JSON object each (for a journal)")
    p.add_argument("--cluster", metavar="URL",
                   help="join the cluster whose store is this PostgreSQL URL, e.g. "
                        "postgresql://corral@db/corral (default: one host on SQLite)")
    p.add_argument("--name", metavar="NAME", help="this host's name in the cluster "
                                                  "(default: the machine's host name)")
    p.add_argument("--labels", metavar="K=V,...", help="this host's labels, for --on")
    p.add_argument("--address", metavar="HOST:PORT",
                   help="where other hosts reach this one's API")
    p = command(sub, pa, "config", cmd_config_show, "every setting in force and where it "
                "came from", "Print every setting of the daemon: its value in force and "
                "where it came from (default, FILE:LINE, environment, --set flag, or 'corral "
                "host set'). Asks the running daemon; without one, tells what a daemon "
                "started now would use.", vm=False)
    p.add_argument("config_command", choices=["show"], metavar="show")
    p.add_argument("--config", metavar="FILE", help="read this file instead of asking the "
                   "daemon (checks it: an unknown key or a bad value is an error)")
    command(sub, pa, "queue", cmd_queue, "VMs waiting for capacity, in the order they will "
            "start", vm=False)
    command(sub, pa, "trace", cmd_trace, "every start request's arrival, start and end as JSON "
            "(for 'corral simulate --trace')", js=False, vm=False)
    hp = sub.add_parser("host", help="this host and a cluster's hosts; live settings",
                        formatter_class=Formatter)
    hsub = hp.add_subparsers(dest="host_command", metavar="COMMAND", required=True)
    command(hsub, pa, "info", cmd_host_info, "CPUs, memory, accelerator in use and why",
            vm=False)
    command(hsub, pa, "list", cmd_host_list, "the cluster's hosts: state (up, down, "
            "cordoned, draining), leader, allocation ratios, VM count", vm=False)
    for action, what in (("cordon", "take no new VMs (its VMs keep running)"),
                         ("uncordon", "take new VMs again")):
        p = command(hsub, pa, action, cmd_host_admin, f"{action} a host: {what}", vm=False)
        p.add_argument("host", metavar="NAME", help="the host's name (corral host list)")
    from corral.cli.migrate import cmd_host_drain

    p = command(hsub, pa, "drain", cmd_host_drain, "empty a host by live migration",
                "Drain a host: it takes no new VMs, and each VM running there is "
                "live-migrated to the host placement chooses (groups' affinity and "
                "anti-affinity respected), --parallel at a time. Each move is reported; "
                "the exit status is 12 when a VM could not be moved.", vm=False)
    p.add_argument("host", metavar="NAME", help="the host's name (corral host list)")
    p.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="migrations at once (default 1)")
    p = command(hsub, pa, "set", cmd_host_set, "change a live setting now, without a restart",
                "Change a setting of the running daemon at once (recorded as an event): "
                "cpu-ratio, memory-ratio, disk-ratio, queue-policy, backfill, quantum, "
                "weigher. It lasts until the daemon restarts; put it in the configuration "
                "file to keep it.", vm=False)
    p.add_argument("key", metavar="KEY", help="the setting (cpu-ratio or scheduler.cpu_ratio)")
    p.add_argument("value", metavar="VALUE")
    cp = sub.add_parser("cluster", help="the cluster of hosts", formatter_class=Formatter)
    csub = cp.add_subparsers(dest="cluster_command", metavar="COMMAND", required=True)
    command(csub, pa, "token", cmd_cluster_token, "make a token another host joins with",
            "Make a join token: start a new host's daemon with CORRAL_JOIN_TOKEN set to it "
            "and --cluster URL. Only a digest of it is stored.", vm=False)
    _images(sub, pa)
