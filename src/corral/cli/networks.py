"""``corral network``, ``router``, ``firewall``, ``attach-nic`` and ``detach-nic``: thin
clients of the daemon's network routes (see :mod:`corral.api.networks`). Stdlib only, like
the rest of the CLI's lean path; ``network graph --format svg`` runs Graphviz's ``dot``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys

from corral.cli import render
from corral.errors import CorralError, InvalidSpec

TYPE_CHECKING = False  # typing is slow to import; the CLI must start in milliseconds
if TYPE_CHECKING:
    from collections.abc import Sequence
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
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=100)


def _client(args: argparse.Namespace) -> Any:
    from corral.client import Client

    return Client(args.socket)


def _out(args: argparse.Namespace, data: Any, human: str) -> int:
    print(json.dumps(data, indent=2, sort_keys=True) if getattr(args, "json", False)
          else human)
    return 0


def _table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def network_table(nets: list[dict[str, Any]]) -> str:
    rows = [("NAME", "SUBNET", "DHCP", "ROUTER", "POLICY", "NICS")]
    rows += [(n["name"], n["subnet"], "yes" if n["dhcp"] else "no",
              n["router"] or ("isolated" if n["isolated"] else "-"), n["policy"],
              str(len(n["ports"]))) for n in nets]
    return _table(rows) if nets else "no networks; make one with 'corral network create'"


def network_detail(n: dict[str, Any]) -> str:
    router = n["router"] or ("none (isolated)" if n["isolated"] else "none")
    lines = [f"network {n['name']}  {n['subnet']}  bridge {n['bridge']}",
             f"gateway {n['gateway']} (router: {router})",
             f"dhcp {'server ' + n['dhcp_server'] + ', pool ' + n['pool'] if n['dhcp'] else 'off'}",
             f"firewall policy {n['policy']}"
             + "".join(f"; #{r['id']} allow {r['allow']} from {r['from']}" for r in n["rules"])]
    if n["ports"]:
        rows = [("VM", "NIC", "ADDRESS", "LEASE", "MAC", "TAP", "COUNTERS (guest's view)")]
        rows += [(p["vm"], p["nic"] or "-", p["ip"], p.get("lease") or "-", p["mac"],
                  p["tap"], render.counters(p["counters"]) if p.get("counters") else "-")
                 for p in n["ports"]]
        lines += ["", _table(rows)]
    return "\n".join(lines)


def cmd_network(args: argparse.Namespace) -> int:
    c, verb = _client(args), args.network_command
    if verb == "create":
        n = c.network_create(args.name, args.subnet, dhcp=not args.no_dhcp,
                             isolated=args.isolated)
        return _out(args, n, f"network {n['name']} created: {n['subnet']}, bridge {n['bridge']}")
    if verb == "list":
        nets = c.network_list()
        return _out(args, nets, network_table(nets))
    if verb == "show":
        n = c.network_show(args.name)
        return _out(args, n, network_detail(n))
    if verb == "rm":
        c.network_delete(args.name)
        return _out(args, {"deleted": args.name}, f"network {args.name} removed")
    return graph(c, args.format, args.output)


def graph(c: Any, fmt: str, output: str | None) -> int:
    """Print (or write to ``output``) the topology as text, dot or svg.

    :raises CorralError: svg without Graphviz's ``dot`` installed, or ``dot`` failing.
    """
    text = c.topology("text" if fmt == "text" else "dot")
    data = text.encode()
    if fmt == "svg":
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


def router_table(routers: list[dict[str, Any]]) -> str:
    rows = [("NAME", "UPLINK", "NETWORKS", "FORWARDS")]
    rows += [(r["name"], r["router_address"] or "-",
              ",".join(n["network"] for n in r["networks"]) or "-",
              " ".join(f"{f['proto']}/{f['host_port']}->{f['vm']}:{f['port']}"
                       for f in r["forwards"]) or "-") for r in routers]
    return _table(rows) if routers else "no routers; make one with 'corral router create'"


def forward_table(forwards: list[dict[str, Any]]) -> str:
    rows = [("ROUTER", "HOST PORT", "VM", "ADDRESS")]
    rows += [(f["router"], f"{f['proto']}/{f['host_port']}", f"{f['vm']}:{f['port']}",
              f"{f['ip']}:{f['port']}") for f in forwards]
    return _table(rows) if forwards else "no forwards"


def cmd_router(args: argparse.Namespace) -> int:
    c, verb = _client(args), args.router_command
    if verb == "create":
        r = c.router_create(args.name, uplink=args.uplink)
        return _out(args, r, f"router {r['name']} created"
                    + (f" (uplink: host {r['host_address']})" if r["uplink"] else ""))
    if verb == "list":
        routers = c.router_list()
        return _out(args, routers, router_table(routers))
    if verb == "show":
        r = c.router_show(args.name)
        return _out(args, r, router_table([r]))
    if verb == "rm":
        c.router_delete(args.name)
        return _out(args, {"deleted": args.name}, f"router {args.name} removed")
    if verb in ("attach", "detach"):
        r = getattr(c, f"router_{verb}")(args.name, args.network)
        return _out(args, r, f"router {args.name} {verb}ed {'to' if verb == 'attach' else 'from'}"
                              f" network {args.network}")
    if verb == "forward":
        vm, _, port = args.target.rpartition(":")
        if not vm or not port.isdigit():
            raise InvalidSpec("target", f"'{args.target}' is not VM:PORT, e.g. web:80")
        f = c.forward_add(args.name, args.proto, args.host_port, vm, int(port))
        return _out(args, f, f"host port {f['proto']}/{f['host_port']} -> {vm}:{port} "
                             f"({f['ip']}) through router {args.name}")
    if verb == "unforward":
        c.forward_delete(args.name, args.proto, args.host_port)
        return _out(args, {"removed": f"{args.proto}/{args.host_port}"},
                    f"host port {args.proto}/{args.host_port} no longer forwarded")
    forwards = [f for f in c.forward_list() if args.name in (None, f["router"])]
    return _out(args, forwards, forward_table(forwards))


def cmd_firewall(args: argparse.Namespace) -> int:
    c, verb = _client(args), args.firewall_command
    if verb == "add":
        r = c.firewall_add(args.target, args.allow, args.source)
        return _out(args, r, f"rule #{r['id']}: allow {r['allow']} from {r['from']} to "
                             + (f"VM {r['vm']}" if r["vm"] else f"network {r['network']}"))
    if verb == "rm":
        c.firewall_delete(args.id)
        return _out(args, {"removed": args.id}, f"rule #{args.id} removed")
    if verb == "policy":
        n = c.network_policy(args.network, args.policy)
        return _out(args, n, f"network {args.network}: traffic no rule allows is "
                             f"{'accepted' if args.policy == 'accept' else 'dropped'}")
    fw = c.firewall_list()
    lines = [f"network {n}: policy {p}" for n, p in sorted(fw["policies"].items())]
    lines += [f"#{r['id']}  allow {r['allow']} from {r['from']} to "
              + (f"VM {r['vm']}" if r["vm"] else f"network {r['network']}")
              for r in fw["rules"]]
    return _out(args, fw, "\n".join(lines) or "no networks")


def cmd_attach_nic(args: argparse.Namespace) -> int:
    vm = _client(args).attach_nic(args.name, args.network, args.mac, args.ip)
    new = vm["nics"][-1]
    return _out(args, vm, f"{new['id']} of {args.name} on network {args.network}: "
                          f"{new['ip']} ({new['mac']})")


def cmd_detach_nic(args: argparse.Namespace) -> int:
    vm = _client(args).detach_nic(args.name, args.nic)
    return _out(args, vm, f"{args.nic} detached from {args.name}")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             common: argparse.ArgumentParser, js: argparse.ArgumentParser) -> None:
    """Add ``network``, ``router``, ``firewall``, ``attach-nic`` and ``detach-nic``."""
    def group(name: str, help_: str, desc: str) -> Any:
        p = sub.add_parser(name, help=help_, description=desc, epilog=EPILOG,
                           formatter_class=_Formatter)
        return p.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)

    def verb(group: Any, name: str, func: Any, help_: str, *args: str) -> Any:
        p = group.add_parser(name, help=help_, description=help_, parents=[common, js],
                             formatter_class=_Formatter)
        for arg in args:
            p.add_argument(arg.lower(), metavar=arg)
        p.set_defaults(func=func)
        return p

    g = group("network", "virtual networks (switches with DHCP and DNS)",
              "Virtual switches: a Linux bridge per network, with a dnsmasq handing out "
              "DHCP reservations bound to MACs and answering NAME.corral. Needs a daemon "
              "running as root.")
    p = verb(g, "create", cmd_network, "make a network", "NAME")
    p.add_argument("--subnet", required=True, metavar="CIDR", help="e.g. 10.20.0.0/24 (/29 "
                   "or larger; .1 is the gateway, .2 the DHCP server)")
    p.add_argument("--no-dhcp", action="store_true", help="no DHCP or DNS server")
    p.add_argument("--isolated", action="store_true", help="no router may ever join it")
    verb(g, "list", cmd_network, "list networks")
    verb(g, "show", cmd_network, "one network: its NICs, leases and counters", "NAME")
    verb(g, "rm", cmd_network, "remove a network (refused while NICs or a router use it)",
         "NAME")
    p = verb(g, "graph", cmd_network, "print the topology: switches, routers, VMs")
    p.add_argument("--format", choices=["text", "dot", "svg"], default="text",
                   help="text (default), dot (Graphviz) or svg (needs Graphviz's dot)")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")

    g = group("router", "virtual routers joining networks, with an optional uplink",
              "Routers: a network namespace with a leg (the gateway address) on each "
              "attached network. With --uplink, guests reach the host (masqueraded) and "
              "'forward' publishes a guest port on a host port.")
    p = verb(g, "create", cmd_router, "make a router", "NAME")
    p.add_argument("--uplink", action="store_true", help="connect it to the host (NAT)")
    verb(g, "list", cmd_router, "list routers")
    verb(g, "show", cmd_router, "one router", "NAME")
    verb(g, "rm", cmd_router, "remove a router (detach its networks first)", "NAME")
    verb(g, "attach", cmd_router, "give the router a leg on a network", "NAME", "NETWORK")
    verb(g, "detach", cmd_router, "take the router's leg off a network", "NAME", "NETWORK")
    p = verb(g, "forward", cmd_router, "publish VM:PORT on a host port", "NAME")
    p.add_argument("proto", choices=["tcp", "udp"])
    p.add_argument("host_port", type=int, metavar="HOSTPORT")
    p.add_argument("target", metavar="VM:PORT")
    p = verb(g, "unforward", cmd_router, "stop forwarding a host port", "NAME")
    p.add_argument("proto", choices=["tcp", "udp"])
    p.add_argument("host_port", type=int, metavar="HOSTPORT")
    p = verb(g, "forwards", cmd_router, "list forwarded host ports")
    p.add_argument("name", nargs="?", metavar="NAME", help="only this router's")

    g = group("firewall", "firewall rules of networks and VMs",
              "Traffic to a network's VMs passes unless the network's policy is drop; then "
              "only what a rule allows does. Anti-spoofing is always on: a VM sends only "
              "from its own MAC and address.")
    p = verb(g, "add", cmd_firewall, "allow traffic to a network's VMs or to one VM", "TARGET")
    p.add_argument("--allow", required=True, metavar="PROTO[/PORT]", help="tcp/22, udp/53, "
                   "icmp, tcp (every port)")
    p.add_argument("--from", dest="source", default="0.0.0.0/0", metavar="CIDR",
                   help="from these addresses only (default: anywhere)")
    p = verb(g, "rm", cmd_firewall, "remove a rule")
    p.add_argument("id", type=int, metavar="ID")
    p = verb(g, "policy", cmd_firewall, "what happens to traffic no rule allows", "NETWORK")
    p.add_argument("policy", choices=["accept", "drop"])
    verb(g, "list", cmd_firewall, "policies and rules")

    p = sub.add_parser("attach-nic", help="give a VM a NIC on a network (hot-plug when "
                       "running)", description="Give a VM a NIC on a network. A running q35 "
                       "VM gets it at once; its guest asks DHCP for an address.",
                       parents=[common, js], formatter_class=_Formatter)
    p.add_argument("name", metavar="VM")
    p.add_argument("network", metavar="NETWORK")
    p.add_argument("--mac", metavar="MAC")
    p.add_argument("--ip", metavar="ADDRESS", help="a fixed address (a DHCP reservation)")
    p.set_defaults(func=cmd_attach_nic)
    p = sub.add_parser("detach-nic", help="take a NIC off a VM (hot-unplug when running)",
                       parents=[common, js], formatter_class=_Formatter)
    p.add_argument("name", metavar="VM")
    p.add_argument("nic", metavar="NIC", help="its id (nic1) or MAC, as 'corral show' lists")
    p.set_defaults(func=cmd_detach_nic)
