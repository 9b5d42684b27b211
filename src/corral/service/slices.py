"""The service's public face: one object per resource, one verb per action.

Front doors (REST routes, the CLI through the Client, tests) call only these:
``svc.vms``, ``svc.disks``, ``svc.snapshots``, ``svc.guest``, ``svc.images``, ``svc.host``,
``svc.networks``, ``svc.routers``. Removal is ``rm`` everywhere.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from corral.errors import CorralError

if TYPE_CHECKING:
    from corral.service.manager import Manager

READY_TIMEOUT = 120.0


class _Slice:
    def __init__(self, m: Manager) -> None:
        self._m = m


class VMs(_Slice):
    """Virtual machines: lifecycle, state, logs and events."""

    async def create(self, body: dict[str, Any], *, start: bool = False, wait: bool = False,
                     timeout: float = READY_TIMEOUT, queue: bool = True) -> dict[str, Any]:
        """Define a VM; with ``start`` also boot it (all or nothing: a failed start removes
        the VM it defined). ``from_snapshot`` in the body makes it a warm start."""
        m = self._m
        if body.get("from_snapshot") is not None:
            from corral.domain import specs as sp
            from corral.service import host
            from corral.service.warm import warm_start

            req = sp.parse_create(body)
            return await warm_start(m, req.name, str(body["from_snapshot"]),
                                    wait=wait or start, timeout=timeout, queue=queue,
                                    sched=sp.scheduling(req, host.facts()))
        view = await m.create(body)
        if start:
            try:
                view = await m.start(view["name"], wait=wait, timeout=timeout, queue=queue)
            except CorralError:
                if m.db.get_vm(view["name"]) is not None and \
                        m._get(view["name"]).state.value == "defined":
                    await m.destroy(view["name"])
                raise
        return view

    def list(self) -> list[dict[str, Any]]:
        return self._m.list_vms()

    async def get(self, name: str) -> dict[str, Any]:
        return await self._m.get(name)

    async def start(self, name: str, *, wait: bool = False, timeout: float = READY_TIMEOUT,
                    queue: bool = True) -> dict[str, Any]:
        return await self._m.start(name, wait=wait, timeout=timeout, queue=queue)

    async def wait_ready(self, name: str, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
        return await self._m.wait_ready(name, timeout)

    async def pause(self, name: str) -> dict[str, Any]:
        return await self._m.pause(name)

    async def resume(self, name: str) -> dict[str, Any]:
        return await self._m.resume(name)

    async def shutdown(self, name: str, timeout: float = 60.0) -> dict[str, Any]:
        return await self._m.shutdown(name, timeout)

    async def stop(self, name: str, *, force: bool = True, timeout: float = 60.0
                   ) -> dict[str, Any]:
        return await self._m.stop(name, force=force, timeout=timeout)

    async def reboot(self, name: str, *, wait: bool = False, timeout: float = READY_TIMEOUT
                     ) -> dict[str, Any]:
        return await self._m.reboot(name, wait=wait, timeout=timeout)

    async def save(self, name: str, file: str | None = None) -> dict[str, Any]:
        return await self._m.save(name, file)

    async def restore(self, name: str, *, wait: bool = False, timeout: float = READY_TIMEOUT
                      ) -> dict[str, Any]:
        return await self._m.restore(name, wait=wait, timeout=timeout)

    async def rm(self, name: str) -> None:
        await self._m.destroy(name)

    async def clone(self, name: str, new: str, *, full: bool = False,
                    snapshot: str | None = None) -> dict[str, Any]:
        from corral.service.warm import clone

        return await clone(self._m, name, new, full, snapshot)

    async def export(self, name: str, file: str, *, live: bool = False) -> dict[str, Any]:
        """Write the VM into one file; ``live`` exports a running VM (paused meanwhile)."""
        from corral.service import portable

        async with self._m._lock(name):
            return await asyncio.to_thread(portable.export, self._m, name, file)

    async def import_(self, file: str, name: str | None = None) -> dict[str, Any]:
        from corral.service import portable

        return await asyncio.to_thread(portable.import_vm, self._m, file, name)

    def logs(self, name: str, offset: int = 0, limit: int = 1 << 20) -> dict[str, Any]:
        return self._m.logs(name, offset, limit)

    def events(self, since: int = 0, vm: str | None = None) -> builtins.list[dict[str, Any]]:
        return self._m.events(since, vm)


class Snapshots(_Slice):
    """Snapshots of one VM, as a tree."""

    async def create(self, vm: str, name: str, *, memory: bool = False) -> dict[str, Any]:
        from corral.service import snapshots

        return await snapshots.create(self._m, vm, name, memory)

    def list(self, vm: str) -> list[dict[str, Any]]:
        from corral.service import snapshots

        return snapshots.tree(self._m, vm)

    async def revert(self, vm: str, name: str) -> dict[str, Any]:
        from corral.service import snapshots

        return await snapshots.revert(self._m, vm, name)

    async def rm(self, vm: str, name: str) -> None:
        from corral.service import snapshots

        await snapshots.delete(self._m, vm, name)


class Disks(_Slice):
    """Named disks and their attachment to VMs."""

    async def create(self, name: str, size: str | None = None, format: str = "qcow2",
                     source: str | None = None) -> dict[str, Any]:
        from corral.service import disks

        return await disks.create(self._m, name, size, format, source)

    async def list(self) -> list[dict[str, Any]]:
        from corral.service import disks

        return await disks.list_all(self._m)

    async def get(self, name: str) -> dict[str, Any]:
        from corral.service import disks

        return await disks.show(self._m, name)

    async def resize(self, name: str, size: str) -> dict[str, Any]:
        from corral.service import disks

        return await disks.resize(self._m, name, size)

    async def rm(self, name: str) -> None:
        from corral.service import disks

        await disks.remove(self._m, name)

    async def attach(self, vm: str, disk: str, *, readonly: bool = False,
                     iops: int | None = None, bps: int | None = None) -> dict[str, Any]:
        from corral.service import disks

        return await disks.attach(self._m, vm, disk, readonly, iops, bps)

    async def detach(self, vm: str, disk: str) -> dict[str, Any]:
        from corral.service import disks

        return await disks.detach(self._m, vm, disk)


class Guest(_Slice):
    """Acting inside a guest through its agent."""

    async def exec(self, vm: str, argv: list[str], timeout: float = 60.0,
                   stdin: bytes | None = None, env: list[str] | None = None
                   ) -> dict[str, Any]:
        from corral.service import guest

        return await guest.exec_command(self._m, vm, argv, timeout, stdin, env)

    def exec_stream(self, vm: str, argv: list[str], timeout: float = 60.0,
                    stdin: bytes | None = None) -> AsyncIterator[dict[str, Any]]:
        from corral.service import guest

        return guest.exec_stream(self._m, vm, argv, timeout, stdin)

    async def read_file(self, vm: str, path: str) -> bytes:
        from corral.service import guest

        return await guest.read_file(self._m, vm, path)

    async def write_file(self, vm: str, path: str, data: bytes) -> dict[str, Any]:
        from corral.service import guest

        return await guest.write_file(self._m, vm, path, data)

    async def addresses(self, vm: str) -> list[dict[str, Any]]:
        from corral.service import guest

        return await guest.addresses(self._m, vm)


class Images(_Slice):
    """Guest images known to the daemon."""

    def list(self) -> list[dict[str, Any]]:
        from corral.images import catalog

        return [{"name": i.name, "arch": i.arch, "path": str(i.dir),
                 "built_at": i.manifest.get("built_at")}
                for i in catalog.list_images(self._m.paths)]

    def rm(self, name: str) -> None:
        self._m.remove_image(name)


class Host(_Slice):
    """The host: inventory, the admission queue, batch jobs and the request trace."""

    def info(self) -> dict[str, Any]:
        return self._m.host_info()

    def queue(self) -> list[dict[str, Any]]:
        return self._m.queue()

    async def batch(self, spec: dict[str, Any], argv: list[str], timeout: float = 600.0,
                    queue: bool = True) -> dict[str, Any]:
        from corral.service import batch

        return await batch.run(self._m, spec, argv, timeout, queue)

    def trace(self) -> list[dict[str, Any]]:
        from corral.service import batch

        return batch.trace(self._m)


class Networks(_Slice):
    """Virtual switches (bridges with DHCP and DNS) and their firewall."""

    async def create(self, name: str, subnet: str, *, dhcp: bool = True,
                     isolated: bool = False) -> dict[str, Any]:
        from corral.service import networks

        return await networks.create(self._m, name, subnet, dhcp, isolated)

    def list(self) -> list[dict[str, Any]]:
        from corral.service import networks

        return networks.list_all(self._m)

    async def get(self, name: str) -> dict[str, Any]:
        from corral.service import networks

        return await networks.show(self._m, name)

    async def rm(self, name: str, *, force: bool = False) -> builtins.list[str]:
        """Remove a network; with ``force`` first detach what uses it (NICs of stopped VMs
        are forgotten, router legs detached). Returns what ``force`` removed."""
        from corral.service import networks

        await networks.remove_network(self._m, name)
        return []

    async def set_policy(self, name: str, policy: str) -> dict[str, Any]:
        from corral.service import networks

        return await networks.set_policy(self._m, name, policy)

    def topology(self) -> dict[str, Any]:
        from corral.service import netgraph

        return netgraph.topology(self._m)

    def render_topology(self, format: str = "text") -> str:
        """The topology as a text tree or a Graphviz graph (``format="dot"``)."""
        from corral.service import netgraph

        return netgraph.render(netgraph.topology(self._m), format)

    def rules(self) -> dict[str, Any]:
        from corral.service import networks

        return networks.list_rules(self._m)

    async def add_rule(self, target: str, allow: str, source: str = "0.0.0.0/0"
                       ) -> dict[str, Any]:
        from corral.service import networks

        return await networks.add_rule(self._m, target, allow, source)

    async def rm_rule(self, rule_id: int) -> None:
        from corral.service import networks

        await networks.remove_rule(self._m, rule_id)

    async def attach_nic(self, vm: str, network: str, mac: str | None = None,
                         ip: str | None = None) -> dict[str, Any]:
        from corral.service import nics

        return await nics.attach(self._m, vm, network, mac, ip)

    async def detach_nic(self, vm: str, nic: str) -> dict[str, Any]:
        from corral.service import nics

        return await nics.detach(self._m, vm, nic)


class Routers(_Slice):
    """Virtual routers (namespaces with forwarding, NAT and port forwards)."""

    async def create(self, name: str, *, uplink: bool = False) -> dict[str, Any]:
        from corral.service import routers

        return await routers.create(self._m, name, uplink)

    def list(self) -> list[dict[str, Any]]:
        from corral.service import routers

        return routers.list_all(self._m)

    def get(self, name: str) -> dict[str, Any]:
        from corral.service import routers

        return routers.view(self._m, name)

    async def rm(self, name: str, *, force: bool = False) -> builtins.list[str]:
        """Remove a router; with ``force`` first detach its legs and forwards. Returns what
        ``force`` removed."""
        from corral.service import routers

        await routers.remove_router(self._m, name)
        return []

    async def attach(self, name: str, network: str) -> dict[str, Any]:
        from corral.service import routers

        return await routers.attach_network(self._m, name, network)

    async def detach(self, name: str, network: str) -> dict[str, Any]:
        from corral.service import routers

        return await routers.detach_network(self._m, name, network)

    def forwards(self) -> builtins.list[dict[str, Any]]:
        from corral.service import routers

        return [routers.forward_view(f) for f in self._m.net.db.forwards.values()]

    async def add_forward(self, name: str, proto: str, host_port: int, vm: str, port: int
                          ) -> dict[str, Any]:
        from corral.service import routers

        return await routers.add_forward(self._m, name, proto, host_port, vm, port)

    async def rm_forward(self, name: str, proto: str, host_port: int) -> None:
        from corral.service import routers

        await routers.remove_forward(self._m, name, proto, host_port)
