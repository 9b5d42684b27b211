"""``corral network``, ``firewall``, ``attach-nic`` and ``detach-nic``: thin clients of the
daemon's network routes (see :mod:`corral.api.networks`); routers are in
:mod:`corral.cli.routers`. Stdlib only, like the rest of the CLI's lean path; ``network graph
--format svg`` runs Graphviz's ``dot``.
"""

from __future__ import annotations

import argparse
import sys

from corral.cli import common, render
from corral.cli.common import Parents, out
from corral.cli.formatter import Formatter
from corral.errors import CorralError

TYPE_CHECKING = False  # typing is slow to import; the CLI must start in milliseconds
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

EPILOG = """\
examples:
  corral network create lan --subnet 10.20.0.0/24
  corral run web --nic lan                 a NIC on lan (DHCP; web.corral in DNS)
  corral run db --nic lan,ip=10.20.0.5     a fixed address (a DHCP reservation)
  corral router create gw --uplink; corral router attach gw lan
  corral router forward gw tcp 8080 web:80 host port 8080 -> web's port 80
  corral firewall policy lan drop; corral firewall add web --allow tcp/80
  corral network graph --format svg -o net.svg
  corral network rm lan --force            detach what uses it first, say what went
"""


def table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def network_table(nets: Sequence[Mapping[str, Any]]) -> str:
    rows: list[tuple[str, ...]] = [("NAME", "SUBNET", "DHCP", "ROUTER", "POLICY", "NICS")]
    rows += [(n["name"], n["subnet"], "yes" if n["dhcp"] else "no",
              n["router"] or ("isolated" if n["isolated"] else "-"), n["policy"],
              str(len(n["ports"]))) for n in nets]
    if any("vni" in n for n in nets):  # a cluster: networks span hosts
        rows = [(*rows[0], "OVERLAY")] + [(*row, overlay_line(n))
                                          for row, n in zip(rows[1:], nets, strict=True)]
    return table(rows) if nets else "no networks; make one with 'corral network create'"


def overlay_line(n: Mapping[str, Any]) -> str:
    """Where a network that spans hosts is: its VNI, its home and its hosts."""
    if "vni" not in n:
        return "-"
    return f"vxlan {n['vni']}, home {n['home']}, on {','.join(n['hosts']) or '-'}"


def network_detail(n: Mapping[str, Any]) -> str:
    router = n["router"] or ("none (isolated)" if n["isolated"] else "none")
    lines = [f"network {n['name']}  {n['subnet']}  bridge {n['bridge']}",
             f"gateway {n['gateway']} (router: {router})",
             f"dhcp {'server ' + n['dhcp_server'] + ', pool ' + n['pool'] if n['dhcp'] else 'off'}",
             f"firewall policy {n['policy']}"
             + "".join(f"; #{r['id']} allow {r['allow']} from {r['from']}" for r in n["rules"])]
    if "vni" in n:
        lines.append(f"overlay {overlay_line(n)}, guest MTU {n['mtu']}")
    if n["ports"]:
        rows: list[tuple[str, ...]] = [("VM", "NIC", "ADDRESS", "LEASE", "MAC", "TAP",
                                        "COUNTERS (guest's view)")]
        rows += [(p["vm"], p["nic"] or "-", p["ip"], p.get("lease") or "-", p["mac"],
                  p["tap"], render.counters(p["counters"]) if p.get("counters") else "-")
                 for p in n["ports"]]
        if "vni" in n:
            rows = [(*rows[0], "HOST")] + [(*row, p.get("host") or "-")
                                           for row, p in zip(rows[1:], n["ports"], strict=True)]
        lines += ["", table(rows)]
    return "\n".join(lines)


def removed_line(what: str, name: str, removed: list[str]) -> str:
    """What ``rm --force`` says: the object and everything it took with it."""
    return f"{what} {name} removed" + (f" (and {', '.join(removed)})" if removed else "")


def cmd_create(args: argparse.Namespace) -> int:
    n = common.client(args).network_create(args.name, args.subnet, dhcp=not args.no_dhcp,
                                           isolated=args.isolated)
    return out(args, n, f"network {n['name']} created: {n['subnet']}, bridge {n['bridge']}")


def cmd_list(args: argparse.Namespace) -> int:
    nets = common.client(args).network_list()
    return out(args, nets, network_table(nets))


def cmd_show(args: argparse.Namespace) -> int:
    n = common.client(args).network_show(args.name)
    return out(args, n, network_detail(n))


def cmd_rm(args: argparse.Namespace) -> int:
    removed = common.client(args).network_rm(args.name, force=args.force)
    return out(args, {"deleted": args.name, "removed": removed},
               removed_line("network", args.name, removed))


def cmd_graph(args: argparse.Namespace) -> int:
    if args.json:  # networks, routers, VMs (and in a cluster: hosts, the overlay)
        return graph(common.client(args), "json", args.output)
    return graph(common.client(args), args.format, args.output)


def graph(c: Any, fmt: str, output: str | None) -> int:
    """Print (or write to ``output``) the topology as text, dot or svg.

    :raises CorralError: svg without Graphviz's ``dot`` installed, or ``dot`` failing.
    """
    data = c.topology(fmt if fmt in ("text", "json") else "dot").encode()
    if fmt == "svg":
        import shutil
        import subprocess

        dot = shutil.which("dot")
        if dot is None:
            raise CorralError("--format svg needs Graphviz's dot (apt-get install graphviz); "
                              "--format dot prints the graph for another renderer")
        res = subprocess.run([dot, "-Tsvg"], input=data, capture_output=True, check=False)
        if res.returncode != 0:
            raise CorralError(f"dot failed: {res.stderr.decode(errors='replace').strip()}")
        data = res.stdout
    if output:
        with open(output, "wb") as f:
            f.write(data)
    else:
        sys.stdout.buffer.write(data if data.endswith(b"\n") else data + b"\n")
    return 0


def _rule(r: Mapping[str, Any]) -> str:
    return f"allow {r['allow']} from {r['from']} to " + (
        f"VM {r['vm']}" if r["vm"] else f"network {r['network']}")


def cmd_firewall_add(args: argparse.Namespace) -> int:
    r = common.client(args).firewall_add(args.target, args.allow, args.source)
    return out(args, r, f"rule #{r['id']}: {_rule(r)}")


def cmd_firewall_rm(args: argparse.Namespace) -> int:
    common.client(args).firewall_rm(args.id)
    return out(args, {"removed": args.id}, f"rule #{args.id} removed")


def cmd_firewall_policy(args: argparse.Namespace) -> int:
    n = common.client(args).network_policy(args.network, args.policy)
    return out(args, n, f"network {args.network}: traffic no rule allows is "
                        f"{'accepted' if args.policy == 'accept' else 'dropped'}")


def cmd_firewall_list(args: argparse.Namespace) -> int:
    fw = common.client(args).firewall_list()
    lines = [f"network {n}: policy {p}" for n, p in sorted(fw["policies"].items())]
    lines += [f"#{r['id']}  {_rule(r)}" for r in fw["rules"]]
    return out(args, fw, "\n".join(lines) or "no networks")


def cmd_attach_nic(args: argparse.Namespace) -> int:
    vm = common.client(args).attach_nic(args.name, args.network, args.mac, args.ip)
    new = vm["nics"][-1]
    return out(args, vm, f"{new['id']} of {args.name} on network {args.network}: "
                         f"{new['ip']} ({new['mac']})")


def cmd_detach_nic(args: argparse.Namespace) -> int:
    vm = common.client(args).detach_nic(args.name, args.nic)
    return out(args, vm, f"{args.nic} detached from {args.name}")


def group(sub: Any, name: str, help_: str, desc: str) -> Any:
    p = sub.add_parser(name, help=help_, description=desc, epilog=EPILOG,
                       formatter_class=Formatter)
    return p.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)


def verb(g: Any, pa: Parents, name: str, func: Any, help_: str, *args: str,
         aliases: tuple[str, ...] = ()) -> Any:
    p = common.command(g, pa, name, func, help_, vm=False, aliases=aliases)
    for arg in args:
        p.add_argument(arg.lower(), metavar=arg)
    return p


def register(sub: Any, pa: Parents) -> None:
    """Add ``network``, ``firewall``, ``attach-nic`` and ``detach-nic``."""
    g = group(sub, "network", "virtual networks (switches with DHCP and DNS)",
              "Virtual switches: a Linux bridge per network, with a dnsmasq handing out "
              "DHCP reservations bound to MACs and answering NAME.corral. Needs a daemon "
              "running as root.")
    p = verb(g, pa, "create", cmd_create, "make a network", "NAME")
    p.add_argument("--subnet", required=True, metavar="CIDR", help="e.g. 10.20.0.0/24 (/29 "
                   "or larger; .1 is the gateway, .2 the DHCP server)")
    p.add_argument("--no-dhcp", action="store_true", help="no DHCP or DNS server")
    p.add_argument("--isolated", action="store_true", help="no router may ever join it")
    verb(g, pa, "list", cmd_list, "list networks")
    verb(g, pa, "show", cmd_show, "one network: its NICs, leases and counters", "NAME")
    p = verb(g, pa, "rm", cmd_rm, "remove a network (refused while NICs or a router use it, "
             "unless --force)", "NAME", aliases=("delete",))
    p.add_argument("--force", action="store_true", help="first detach the router legs and "
                   "forget the NICs of stopped VMs on it; prints what was removed")
    p = verb(g, pa, "graph", cmd_graph, "print the topology: switches, routers, VMs")
    p.add_argument("--format", choices=["text", "dot", "svg"], default="text",
                   help="text (default), dot (Graphviz) or svg (needs Graphviz's dot)")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")

    g = group(sub, "firewall", "firewall rules of networks and VMs",
              "Traffic to a network's VMs passes unless the network's policy is drop; then "
              "only what a rule allows does. Anti-spoofing is always on: a VM sends only "
              "from its own MAC and address.")
    p = verb(g, pa, "add", cmd_firewall_add, "allow traffic to a network's VMs or to one VM",
             "TARGET")
    p.add_argument("--allow", required=True, metavar="PROTO[/PORT]", help="tcp/22, udp/53, "
                   "icmp, tcp (every port)")
    p.add_argument("--from", dest="source", default="0.0.0.0/0", metavar="CIDR",
                   help="from these addresses only (default: anywhere)")
    p = verb(g, pa, "rm", cmd_firewall_rm, "remove a rule")
    p.add_argument("id", type=int, metavar="ID")
    p = verb(g, pa, "policy", cmd_firewall_policy, "what happens to traffic no rule allows",
             "NETWORK")
    p.add_argument("policy", choices=["accept", "drop"])
    verb(g, pa, "list", cmd_firewall_list, "policies and rules")

    p = common.command(sub, pa, "attach-nic", cmd_attach_nic, "give a VM a NIC on a network "
                       "(hot-plug when running)", "Give a VM a NIC on a network. A running q35 "
                       "VM gets it at once; its guest asks DHCP for an address.", vm=False)
    p.add_argument("name", metavar="VM")
    p.add_argument("network", metavar="NETWORK")
    p.add_argument("--mac", metavar="MAC")
    p.add_argument("--ip", metavar="ADDRESS", help="a fixed address (a DHCP reservation)")
    p = common.command(sub, pa, "detach-nic", cmd_detach_nic, "take a NIC off a VM (hot-unplug "
                       "when running)", vm=False)
    p.add_argument("name", metavar="VM")
    p.add_argument("nic", metavar="NIC", help="its id (nic1) or MAC, as 'corral show' lists")
