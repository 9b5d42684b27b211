"""The topology of the virtual networks, as a tree of text or as a Graphviz graph.

:func:`topology` reads it from the daemon's state (no host calls); :func:`render` is pure::

    host
    └── router gw  uplink: host 10.255.0.1, router 10.255.0.2
        ├── forward tcp/8080 -> web:80
        └── network lan  10.20.0.0/24  gateway 10.20.0.1  dhcp
            ├── vm web  nic0  10.20.0.10  running
            └── vm db  nic0  10.20.0.11  stopped
    network iso  10.40.0.0/24  isolated  dhcp
    user-mode networking
    └── vm x  nic0  tcp::8022-:22  running

``dot`` draws the same: the host as a house, routers as octagons, networks as boxes, VMs as
ellipses, and each line labelled with the address at its end (``dot -Tsvg`` makes a picture).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from corral.service import overlaynets

if TYPE_CHECKING:
    from corral.service.netstate import Networks

Tree = tuple[str, list[Any]]  # (label, children)


def topology(net: Networks) -> dict[str, Any]:
    """Networks (with their ports), routers (with their forwards) and user-mode NICs."""
    if net.overlay is not None:
        net.overlay.refresh()  # a few ms: the cluster's networks as they are now
    states = {r.name: r.state.value for r in net.rt.db.list_vms()}
    nets = []
    for name, row in net.db.networks.items():
        leg = net.db.legs.get(name)
        nets.append({
            "name": name, "subnet": row.plan.subnet, "gateway": row.plan.gateway,
            "dhcp": row.plan.dhcp, "isolated": row.isolated,
            "router": leg.router if leg else None,
            "ports": [{"vm": p.vm, "nic": _device(net, p.vm, p.ifname), "ip": p.ip,
                       "state": states.get(p.vm),
                       **({"host": overlaynets.host_of(net, p.vm)} if net.overlay else {})}
                      for p in net.ports(name)], **overlaynets.describe(net, name)})
    for name in overlaynets.elsewhere(net):  # cluster networks this host does not carry
        seen = overlaynets.view_elsewhere(net, name)
        nets.append({**{k: seen[k] for k in ("name", "subnet", "gateway", "dhcp", "isolated",
                                             "router", "vni", "home", "mtu", "hosts")},
                     "ports": [{"vm": p["vm"], "nic": None, "ip": p["ip"], "state": None,
                                "host": p["host"]} for p in seen["ports"]]})
    routers = [{"name": name, "uplink": plan.uplink is not None,
                "host_address": str(plan.host_ip.ip) if plan.uplink else None,
                "router_address": str(plan.router_ip.ip) if plan.uplink else None,
                "forwards": [{"proto": f.forward.proto, "host_port": f.forward.host_port,
                              "vm": f.vm, "port": f.forward.port}
                             for f in net.db.forwards.values() if f.forward.router == name]}
               for name, plan in net.db.routers.items()]
    user = [{"vm": rec.name, "nic": nic.device(i), "hostfwd": nic.hostfwd,
             "state": rec.state.value}
            for rec in net.rt.db.list_vms() for i, nic in enumerate(rec.spec.nics)
            if nic.mode == "user"]
    out = {"networks": nets, "routers": routers, "user": user}
    return {**out, "hosts": overlaynets.hosts(net)} if net.overlay else out


def _device(net: Networks, vm: str, ifname: str) -> str | None:
    rec = net.rt.db.get_vm(vm)
    return next((n.device(i) for i, n in enumerate(rec.spec.nics if rec else [])
                 if n.ifname == ifname), None)


def render(topo: dict[str, Any], format: str = "text") -> str:
    """``topo`` as a text tree (``text``) or a Graphviz graph (``dot``)."""
    return _dot(topo) if format == "dot" else _text(topo)


def _network_label(n: dict[str, Any]) -> str:
    flags = [f"gateway {n['gateway']}" if n["router"] else "",
             "isolated" if n["isolated"] else "", "dhcp" if n["dhcp"] else "no dhcp"]
    if "vni" in n:
        flags.append(f"overlay vxlan {n['vni']} mtu {n['mtu']} on " + ", ".join(
            f"{h} (home)" if h == n["home"] else h for h in n["hosts"]))
    return "  ".join([f"network {n['name']}", n["subnet"], *[f for f in flags if f]])


def _port_label(p: dict[str, Any]) -> str:
    parts = [f"vm {p['vm']}", p["nic"] or "-", p["ip"], p["state"] or ""]
    if p.get("host"):
        parts.append(f"on {p['host']}")
    return "  ".join(x for x in parts if x)


def _network_tree(n: dict[str, Any]) -> Tree:
    return (_network_label(n), [(_port_label(p), []) for p in n["ports"]])


def _text(topo: dict[str, Any]) -> str:
    roots: list[Tree] = []
    uplinked: list[Tree] = []
    for r in topo["routers"]:
        label = f"router {r['name']}"
        if r["uplink"]:
            label += f"  uplink: host {r['host_address']}, router {r['router_address']}"
        children: list[Tree] = [(f"forward {f['proto']}/{f['host_port']} -> "
                                 f"{f['vm']}:{f['port']}", []) for f in r["forwards"]]
        children += [_network_tree(n) for n in topo["networks"] if n["router"] == r["name"]]
        (uplinked if r["uplink"] else roots).append((label, children))
    if uplinked:
        roots.insert(0, ("host", uplinked))
    roots += [_network_tree(n) for n in topo["networks"] if n["router"] is None]
    if topo.get("hosts"):
        roots.insert(0, ("cluster hosts", [
            (f"host {h['name']}  underlay {h['underlay'] or '?'}"
             f"{'  (this daemon)' if h['self'] else ''}", []) for h in topo["hosts"]]))
    if topo["user"]:
        roots.append(("user-mode networking", [
            (f"vm {u['vm']}  {u['nic']}  {' '.join(u['hostfwd']) or 'no forwards'}  "
             f"{u['state']}", []) for u in topo["user"]]))
    if not roots:
        return "no networks, routers or NICs yet"
    lines: list[str] = []
    for label, children in roots:
        lines.append(label)
        _branches(children, "", lines)
    return "\n".join(lines)


def _branches(children: list[Tree], prefix: str, lines: list[str]) -> None:
    for i, (label, grandchildren) in enumerate(children):
        last = i == len(children) - 1
        lines.append(f"{prefix}{'└── ' if last else '├── '}{label}")
        _branches(grandchildren, prefix + ("    " if last else "│   "), lines)


def _dot(topo: dict[str, Any]) -> str:
    q = json.dumps  # a JSON string is a valid DOT string: quotes and \n escaped alike
    out = ["graph corral {", '  graph [rankdir=LR, fontname="Helvetica"];',
           '  node [fontname="Helvetica", fontsize=10];',
           '  edge [fontname="Helvetica", fontsize=9];']
    if any(r["uplink"] for r in topo["routers"]):
        out.append('  "host" [shape=house, label="host"];')
    for r in topo["routers"]:
        out.append(f"  {q('router:' + r['name'])} [shape=octagon, label={q(r['name'])}];")
        if r["uplink"]:
            out.append(f"  \"host\" -- {q('router:' + r['name'])} "
                       f"[label={q(r['host_address'] + ' / ' + r['router_address'])}];")
    vms: dict[str, str] = {}
    for n in topo["networks"]:
        node = q("network:" + n["name"])
        style = "rounded,dashed" if n["isolated"] else "rounded"
        out.append(f"  {node} [shape=box, style={q(style)}, "
                   f"label={q(n['name'] + chr(10) + n['subnet'])}];")
        if n["router"]:
            out.append(f"  {q('router:' + n['router'])} -- {node} [label={q(n['gateway'])}];")
        for p in n["ports"]:
            vms[p["vm"]] = p["state"] or ""
            out.append(f"  {node} -- {q('vm:' + p['vm'])} "
                       f"[label={q(str(p['nic']) + ' ' + p['ip'])}];")
    if topo["user"]:
        out.append('  "user" [shape=box, style="dashed", label="user-mode networking"];')
    for u in topo["user"]:
        vms[u["vm"]] = u["state"]
        out.append(f"  \"user\" -- {q('vm:' + u['vm'])} "
                   f"[label={q(' '.join([u['nic'], *u['hostfwd']]))}];")
    for vm, state in vms.items():
        out.append(f"  {q('vm:' + vm)} [shape=ellipse, label={q(vm + chr(10) + state)}];")
    out += _dot_hosts(topo)
    out.append("}")
    return "\n".join(out) + "\n"


def _dot_hosts(topo: dict[str, Any]) -> list[str]:
    """The cluster's hosts as houses: each network that spans hosts joined to its carriers
    (labelled with its VXLAN id), each VM to the host it runs on."""
    q = json.dumps
    out = [f"  {q('host:' + h['name'])} [shape=house, style=bold, "
           f"label={q(h['name'] + chr(10) + (h['underlay'] or ''))}];"
           for h in topo.get("hosts", [])]
    placed: dict[str, str] = {}
    for n in topo["networks"]:
        for h in n.get("hosts", []):
            label = f"vxlan {n['vni']}" + (" home" if h == n.get("home") else "")
            out.append(f"  {q('network:' + n['name'])} -- {q('host:' + h)} "
                       f"[style=bold, label={q(label)}];")
        placed |= {p["vm"]: p["host"] for p in n["ports"] if p.get("host")}
    out += [f"  {q('vm:' + vm)} -- {q('host:' + host)} [style=dashed, label=\"runs on\"];"
            for vm, host in placed.items()]
    return out
