"""What the daemon does with its networks when it starts: find again, or make, what the store
says exists; remove what the store says is gone; touch nothing else.

In order, each unit on its own (a unit that fails is logged and the rest goes on):

1. Records whose unit is gone (a removal the daemon did not finish): their objects are
   removed and the records forgotten. Taps count as gone unless their VM's QEMU runs.
2. Every network (``ensure_network`` with all its ports and its firewall), every router
   (``ensure_router`` with its forwards) and every leg (``attach``): what survived is found
   again, what is missing is made (and logged), and the records are written anew.
3. Taps: a VM whose QEMU was adopted gets its taps found again (re-joined to a bridge that
   was made again); any other VM's tap is deleted by name, in case the daemon died between
   making one and recording it.
4. A dnsmasq whose files are under the daemon's networks directory but that no record names
   is stopped. (One recorded elsewhere, in the home as Corral once kept them, is stopped
   before step 2 starts it again where dnsmasq can read its files.)

This is the exact form of garbage collection. The library's ``collect_garbage`` is not used:
it removes every object with Corral's prefixes that the given records do not name, which on
a machine with more than one daemon (the tests run several) would take the others' networks.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from corral.errors import CorralError
from corral.host.network import (
    Made,
    attach,
    dnsmasq,
    ensure_network,
    ensure_router,
    ensure_tap,
    links,
)
from corral.host.network import remove as remove_records
from corral.service.netstate import reap_dnsmasq_zombies
from corral.service.nics import _port
from corral.store.networks import NetStore

if TYPE_CHECKING:
    from corral.service.netstate import Networks

log = logging.getLogger(__name__)


async def reconcile(net: Networks) -> None:
    """Bring the host in line with the stored networks (see the module doc)."""
    if net.db.empty():
        return
    if os.geteuid() != 0:
        log.warning("the store holds networks, but without root this daemon leaves them be")
        return
    async with net.lock:
        await net.call(_reconcile, net)
    reap_dnsmasq_zombies()


def _reconcile(net: Networks) -> None:
    db, host = net.db, net.host
    for owner in db.owners():
        if not _exists(net, owner):
            with _unit(owner, "remove"):
                remove_records(db.records(owner))
                db.drop_records(owner)
    for r in db.records():
        if r.kind == "dnsmasq" and not Path(r.detail).is_relative_to(host.run_dir):
            with _unit(f"dnsmasq in {r.detail}", "move"):
                dnsmasq.stop(Path(r.detail))
    for name, row in db.networks.items():
        with _unit(f"network:{name}", "make"):
            _keep(db, f"network:{name}",
                  ensure_network(host, row.plan, net.ports(name), net.firewall(name)))
    for name, plan in db.routers.items():
        with _unit(f"router:{name}", "make"):
            forwards = [f.forward for f in db.forwards.values() if f.forward.router == name]
            _keep(db, f"router:{name}", ensure_router(host, plan, forwards))
    for network, leg in db.legs.items():
        owner = f"router:{leg.router}/{network}"
        with _unit(owner, "make"):
            _keep(db, owner, attach(host, db.routers[leg.router], leg,
                                    db.networks[network].plan))
    for rec in net.rt.db.list_vms():
        nics = [n for n in rec.spec.nics if n.mode == "network" and n.ifname
                and n.planned_for == rec.name and n.network in db.networks]
        with _unit(f"vm:{rec.name}", "find the taps of"):
            if rec.name in net.rt.live:
                _keep(db, f"vm:{rec.name}", *(ensure_tap(
                    host, db.networks[str(n.network)].plan, _port(rec.name, n)) for n in nics))
            else:
                for nic in nics:
                    links.delete_link(str(nic.ifname), host.netns)
    kept = {Path(r.detail) for r in db.records() if r.kind == "dnsmasq"}
    for pid, files in dnsmasq.find_all().items():
        if files.is_relative_to(host.run_dir) and files not in kept:
            with _unit(f"dnsmasq {pid} (no network of this daemon uses {files})", "stop"):
                dnsmasq.terminate(pid)
                dnsmasq.stop(files)


def _exists(net: Networks, owner: str) -> bool:
    db = net.db
    kind, _, unit = owner.partition(":")
    if kind == "network":
        return unit in db.networks
    if kind == "vm":
        return unit in net.rt.live and net.rt.db.get_vm(unit) is not None
    router, _, network = unit.partition("/")
    if network:
        return network in db.legs and db.legs[network].router == router
    return router in db.routers


def _keep(db: NetStore, owner: str, *made: Made) -> None:
    """Record every part of the unit, after logging those that had to be made again."""
    new = [r for one in made for r in one.new]
    if new:
        log.info("%s: made again %s", owner, ", ".join(f"{r.kind} {r.name}" for r in new))
    db.set_records(owner, [r for one in made for r in one.records])


@contextlib.contextmanager
def _unit(owner: str, what: str) -> Iterator[None]:
    """One unit's step: a failure is logged, and the daemon goes on with the others."""
    try:
        yield
    except CorralError as err:
        log.warning("could not %s %s: %s", what, owner, err)
