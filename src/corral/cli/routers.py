"""``corral router``: virtual routers, their legs on networks and their port forwards."""

from __future__ import annotations

import argparse

from corral.cli import common
from corral.cli.common import Parents, out
from corral.cli.networks import group, removed_line, table, verb
from corral.errors import InvalidSpec

TYPE_CHECKING = False  # typing is slow to import; the CLI must start in milliseconds
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any


def router_table(routers: Sequence[Mapping[str, Any]]) -> str:
    rows = [("NAME", "UPLINK", "NETWORKS", "FORWARDS")]
    rows += [(r["name"], r["router_address"] or "-",
              ",".join(n["network"] for n in r["networks"]) or "-",
              " ".join(f"{f['proto']}/{f['host_port']}->{f['vm']}:{f['port']}"
                       for f in r["forwards"]) or "-") for r in routers]
    return table(rows) if routers else "no routers; make one with 'corral router create'"


def forward_table(forwards: Sequence[Mapping[str, Any]]) -> str:
    rows = [("ROUTER", "HOST PORT", "VM", "ADDRESS")]
    rows += [(f["router"], f"{f['proto']}/{f['host_port']}", f"{f['vm']}:{f['port']}",
              f"{f['ip']}:{f['port']}") for f in forwards]
    return table(rows) if forwards else "no forwards"


def cmd_create(args: argparse.Namespace) -> int:
    r = common.client(args).router_create(args.name, uplink=args.uplink)
    return out(args, r, f"router {r['name']} created"
               + (f" (uplink: host {r['host_address']})" if r["uplink"] else ""))


def cmd_list(args: argparse.Namespace) -> int:
    routers = common.client(args).router_list()
    return out(args, routers, router_table(routers))


def cmd_show(args: argparse.Namespace) -> int:
    r = common.client(args).router_show(args.name)
    return out(args, r, router_table([r]))


def cmd_rm(args: argparse.Namespace) -> int:
    removed = common.client(args).router_rm(args.name, force=args.force)
    return out(args, {"deleted": args.name, "removed": removed},
               removed_line("router", args.name, removed))


def cmd_attach(args: argparse.Namespace) -> int:
    r = common.client(args).router_attach(args.name, args.network)
    return out(args, r, f"router {args.name} attached to network {args.network}")


def cmd_detach(args: argparse.Namespace) -> int:
    r = common.client(args).router_detach(args.name, args.network)
    return out(args, r, f"router {args.name} detached from network {args.network}")


def cmd_forward(args: argparse.Namespace) -> int:
    vm, _, port = args.target.rpartition(":")
    if not vm or not port.isdigit():
        raise InvalidSpec("target", f"'{args.target}' is not VM:PORT, e.g. web:80")
    f = common.client(args).forward_add(args.name, args.proto, args.host_port, vm, int(port))
    return out(args, f, f"host port {f['proto']}/{f['host_port']} -> {vm}:{port} "
                        f"({f['ip']}) through router {args.name}")


def cmd_unforward(args: argparse.Namespace) -> int:
    common.client(args).forward_rm(args.name, args.proto, args.host_port)
    return out(args, {"removed": f"{args.proto}/{args.host_port}"},
               f"host port {args.proto}/{args.host_port} no longer forwarded")


def cmd_forwards(args: argparse.Namespace) -> int:
    forwards = [f for f in common.client(args).forward_list()
                if args.name in (None, f["router"])]
    return out(args, forwards, forward_table(forwards))


def register(sub: Any, pa: Parents) -> None:
    """Add ``router`` and its verbs."""
    g = group(sub, "router", "virtual routers joining networks, with an optional uplink",
              "Routers: a network namespace with a leg (the gateway address) on each "
              "attached network. With --uplink, guests reach the host (masqueraded) and "
              "'forward' publishes a guest port on a host port.")
    p = verb(g, pa, "create", cmd_create, "make a router", "NAME")
    p.add_argument("--uplink", action="store_true", help="connect it to the host (NAT)")
    verb(g, pa, "list", cmd_list, "list routers")
    verb(g, pa, "show", cmd_show, "one router", "NAME")
    p = verb(g, pa, "rm", cmd_rm, "remove a router (detach its networks first, or --force)",
             "NAME", aliases=("delete",))
    p.add_argument("--force", action="store_true", help="first detach its legs and remove "
                   "its forwards; prints what was removed")
    verb(g, pa, "attach", cmd_attach, "give the router a leg on a network", "NAME", "NETWORK")
    verb(g, pa, "detach", cmd_detach, "take the router's leg off a network", "NAME", "NETWORK")
    p = verb(g, pa, "forward", cmd_forward, "publish VM:PORT on a host port", "NAME")
    p.add_argument("proto", choices=["tcp", "udp"])
    p.add_argument("host_port", type=int, metavar="HOSTPORT")
    p.add_argument("target", metavar="VM:PORT")
    p = verb(g, pa, "unforward", cmd_unforward, "stop forwarding a host port", "NAME")
    p.add_argument("proto", choices=["tcp", "udp"])
    p.add_argument("host_port", type=int, metavar="HOSTPORT")
    p = verb(g, pa, "forwards", cmd_forwards, "list forwarded host ports")
    p.add_argument("name", nargs="?", metavar="NAME", help="only this router's")
