"""Cold move: ``corral move VM --to HOST`` for a VM that does not run (defined, stopped,
saved or crashed).

The daemon of the VM's host (a request sent elsewhere is forwarded there) exports the VM
into one file (:mod:`corral.service.portable`: spec, disks, snapshots, saved state, each
with its checksum) and sends it over the target's authenticated TLS API; the target moves
the VM's cluster-wide name to itself, imports the file (a saved VM is then restored: it
resumes there) and answers with the VM. Only then does the source let go of its copy:
it forgets the record (the name is no longer its) and removes its files. A failure before
the target's answer leaves the VM where it was; a failed import gives the name back.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from corral.domain.states import State
from corral.errors import HostUnavailable, InvalidSpec, InvalidState, NotFound
from corral.service.clusterview import ClusterView
from corral.service.provision import remove_vm_dir
from corral.store import hostmoves

MOVABLE = (State.DEFINED, State.STOPPED, State.SAVED, State.CRASHED)
#: sends a file to another host: (its route: host, address, fingerprint, token; url; file)
Transfer = Callable[[dict[str, Any], str, Path], Awaitable[dict[str, Any]]]


async def move(view: ClusterView, name: str, to: str, transfer: Transfer) -> dict[str, Any]:
    """Move VM ``name`` of this host to host ``to``; its view there.

    :raises InvalidState: the VM runs. :raises InvalidSpec: it is already there, or its
        files are on shared storage (``--ha``). :raises NotFound: no such VM or host.
    :raises HostUnavailable: the target is not up or serves no API.
    """
    rt = view.rt
    rec = rt.get(name)
    if rec.state not in MOVABLE:
        raise InvalidState(name, "move", rec.state.value, [s.value for s in MOVABLE])
    if to == view.name:
        raise InvalidSpec("to", f"'{name}' is already on host {to}")
    if rec.spec.sched.ha:
        raise InvalidSpec("vm", f"'{name}' is on shared storage (--ha): every host has its "
                                "files already")
    hosts = {h["name"]: h for h in await view.hosts()}
    if to not in hosts:
        raise NotFound(f"no host '{to}' in the cluster; see 'corral host list'")
    if hosts[to]["state"] != "up":
        raise HostUnavailable(f"host {to} is {hosts[to]['state']}", to)
    peer = await asyncio.to_thread(view.cs.peer, to)
    if peer is None:
        raise HostUnavailable(f"host {to} serves no API to send the VM to (--listen)", to)
    address, fingerprint, token = peer
    file = rt.paths.home / f".move-{name}-{uuid.uuid4().hex[:8]}.corral"
    try:
        await view.vms.export(name, str(file))
        moved = await transfer({"host": to, "address": address, "fingerprint": fingerprint,
                                "api_token": token},
                               f"/v1/cluster/incoming/{name}?source={view.name}", file)
    finally:
        file.unlink(missing_ok=True)
    hostmoves.forget_vm(rt.db, name)  # the name is the target's now
    remove_vm_dir(rt.paths.vm_dir(name))
    shutil.rmtree(rt.run_dir(name), ignore_errors=True)
    rt.forget(name)
    return moved


async def receive(view: ClusterView, name: str, source: str, file: Path) -> dict[str, Any]:
    """Take VM ``name`` moved from host ``source`` (its export in ``file``): claim its
    name, import it, restore it if it was saved.

    :raises AlreadyExists: ``source`` does not own that name (any more).
    """
    await asyncio.to_thread(view.cs.hand_over, name, source, view.name)
    try:
        vm = await view.vms.import_(str(file), name)
    except BaseException:
        await asyncio.to_thread(view.cs.hand_over, name, view.name, source)
        raise
    if vm["state"] == State.SAVED.value:
        vm = await view.vms.restore(name)
    return {**vm, "host": view.name}
