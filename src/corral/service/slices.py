"""The service's public face for the smaller resources: one object per resource, one verb
per action, each a thin door onto the use-case module that owns the resource (the VMs and
guest slices live in :mod:`.vms` and :mod:`.guest`).

Front doors (REST routes, the CLI through the Client, tests) call only the slices on the
composition root (:class:`corral.service.manager.Manager`): ``vms``, ``disks``,
``snapshots``, ``guest``, ``images``, ``host``, ``networks``, ``routers``. Removal is ``rm``
everywhere.
"""

from __future__ import annotations

import asyncio
import builtins
import shutil
from typing import TYPE_CHECKING, Any

from corral.errors import CorralError, InUse, InvalidSpec, NotFound
from corral.images import catalog
from corral.service import access

if TYPE_CHECKING:
    from corral.engine.accel import Accel
    from corral.service.guest import GuestService
    from corral.service.lifecycle import Lifecycle
    from corral.service.netstate import Networks as NetState
    from corral.service.runtime import VMRuntime
    from corral.service.scheduling import Scheduler
    from corral.service.vms import VMs


class _Slice:
    def __init__(self, rt: VMRuntime) -> None:
        self.rt = rt


class Snapshots(_Slice):
    """Snapshots of one VM, as a tree."""

    def __init__(self, rt: VMRuntime, life: Lifecycle) -> None:
        super().__init__(rt)
        self.life = life

    async def create(self, vm: str, name: str, *, memory: bool = False,
                     template: bool = False) -> dict[str, Any]:
        """With ``template``, the snapshot's warm-start template is made before this returns,
        so the first warm start from it is as fast as the later ones; without, a memory
        snapshot's template is made in the background right after (see
        :func:`.warm.template_soon`)."""
        from corral.service import snapshots, warm

        snap = await snapshots.create(self.rt, vm, name, memory, template)
        if template:
            await warm.ensure_template(self.rt, vm, name)
            snap["template"] = True
        elif snap["memory"]:
            warm.template_soon(self.rt, vm, name)
        return snap

    def list(self, vm: str) -> list[dict[str, Any]]:
        from corral.service import snapshots

        return snapshots.tree(self.rt, vm)

    async def revert(self, vm: str, name: str) -> dict[str, Any]:
        from corral.service import snapshots

        return await snapshots.revert(self.rt, self.life.sched, self.life.start, vm, name)

    async def rm(self, vm: str, name: str) -> None:
        from corral.service import snapshots

        await snapshots.delete(self.rt, vm, name)


class Disks(_Slice):
    """Named disks and their attachment to VMs."""

    async def create(self, name: str, size: str | None = None, format: str = "qcow2",
                     source: str | None = None) -> dict[str, Any]:
        from corral.service import disks

        return await disks.create(self.rt, name, size, format, source)

    async def list(self) -> list[dict[str, Any]]:
        from corral.service import disks

        return await disks.list_all(self.rt)

    async def get(self, name: str) -> dict[str, Any]:
        from corral.service import disks

        return await disks.show(self.rt, name)

    async def resize(self, name: str, size: str) -> dict[str, Any]:
        from corral.service import disks

        return await disks.resize(self.rt, name, size)

    async def rm(self, name: str) -> None:
        from corral.service import disks

        await disks.remove(self.rt, name)

    async def attach(self, vm: str, disk: str, *, readonly: bool = False,
                     iops: int | None = None, bps: int | None = None) -> dict[str, Any]:
        from corral.service import disks

        return await disks.attach(self.rt, vm, disk, readonly, iops, bps)

    async def detach(self, vm: str, disk: str) -> dict[str, Any]:
        from corral.service import disks

        return await disks.detach(self.rt, vm, disk)


class Images(_Slice):
    """Guest images known to the daemon."""

    def list(self) -> list[dict[str, Any]]:
        return [_image_view(i) for i in catalog.list_images(self.rt.paths)]

    async def import_(self, name: str, *, upload: str | None = None, file: str | None = None,
                      agent: bool = False, root_device: str = "virtio") -> dict[str, Any]:
        """Import a disk image, uploaded (``upload``: it is used up) or at a path the host
        allows (``file``), as image ``name``.

        :raises InvalidSpec: a bad name or file, or neither or both of upload and file.
        :raises PathNotAllowed: ``file`` lies outside the allowed directories.
        :raises AlreadyExists: the name is taken. :raises NotFound: no such upload.
        """
        from corral.images.importer import import_image
        from corral.service import hostpaths
        from corral.service.uploads import Uploads

        if (upload is None) == (file is None):
            raise InvalidSpec("upload", "give an upload id (or a file the host allows)")
        source = (Uploads(self.rt.paths.home).path(upload) if upload is not None
                  else hostpaths.check("file", str(file), self.rt.paths))
        try:
            path = await asyncio.to_thread(
                import_image, self.rt.paths.images, name, source, agent=agent,
                root_device=root_device, source_name="upload" if upload else str(source),
                shown="the uploaded file" if upload else None)
        finally:
            if upload is not None:
                source.unlink(missing_ok=True)
        image = catalog.find(self.rt.paths, path.name)
        assert image is not None
        return _image_view(image)

    def rm(self, name: str) -> None:
        """:raises InUse: while a VM uses it. :raises NotFound: no such image."""
        image = catalog.find(self.rt.paths, name)
        if image is None:
            raise NotFound(f"no image named '{name}'; see 'corral image list'")
        users = sorted(r.name for r in self.rt.db.list_vms() if r.spec.image == name)
        if users:
            raise InUse("image", name, "remove", users)
        if image.dir.parent != self.rt.paths.images:
            raise CorralError(f"image '{name}' lives in {image.dir.parent}, outside "
                              f"{self.rt.paths.images}; remove it there")
        shutil.rmtree(image.dir)


def _image_view(image: catalog.Image) -> dict[str, Any]:
    return {"name": image.name, "arch": image.arch, "path": str(image.dir),
            "built_at": image.manifest.get("built_at")}


class Host(_Slice):
    """The host: inventory, the admission queue, batch jobs and the request trace."""

    def __init__(self, rt: VMRuntime, sched: Scheduler, accel: Accel, vms: VMs,
                 guest: GuestService) -> None:
        super().__init__(rt)
        self.sched = sched
        self.accel = accel
        self.vms = vms
        self.guest = guest

    def info(self) -> dict[str, Any]:
        from corral.domain.states import LIVE
        from corral.service import hostfacts

        info = hostfacts.info(self.accel)
        info["scheduler"] = self.sched.info()
        vms = self.rt.db.list_vms()
        info.update(home=str(self.rt.paths.home), vms=len(vms),
                    vms_running=sum(1 for r in vms if r.state in LIVE),
                    confinement=self.rt.driver.confinement_of(None))
        return info

    def queue(self) -> builtins.list[dict[str, Any]]:
        vms = self.rt.db
        return [e for e in self.sched.entries()
                if (rec := vms.get_vm(e["vm"])) is None or access.in_scope(rec.project)]

    async def batch(self, spec: dict[str, Any], argv: builtins.list[str],
                    timeout: float = 600.0, queue: bool = True) -> dict[str, Any]:
        from corral.service import batch

        return await batch.run(self.vms, self.guest, spec, argv, timeout, queue)

    def trace(self) -> builtins.list[dict[str, Any]]:
        from corral.service import batch

        return batch.trace(self.rt)

    def config(self) -> dict[str, Any]:
        """The configuration file in use and every setting in force, with where it came
        from."""
        from corral import settings

        path = settings.file_path()
        return {"file": str(path) if path else None, "settings": settings.table()}

    def set(self, key: str, value: str) -> dict[str, Any]:
        """Change a live setting now (until the daemon restarts), recorded as a
        ``setting_changed`` event of ``host``.

        :raises InvalidSpec: no such setting, it needs a restart, or a bad value.
        """
        from corral import settings

        # who takes up a live change, by the key's table (a new live setting adds its part)
        take_up = {"scheduler": self.sched.reload_settings}
        declared = settings.declared(key)
        taker = take_up.get(declared.key.partition(".")[0])
        if declared.live and taker is None:
            raise settings.SettingError(key, f"no part of the daemon takes up '{key}' while "
                                             "it runs; set it in the configuration file")
        setting, old, new = settings.set_live(key, value, taker or (lambda: None))
        self.rt.db.add_event("host", "setting_changed",
                             {"key": setting.key, "old": old, "new": new})
        self.rt.db.flush()  # in the log before the answer
        return {"key": setting.key, "old": old, "value": new,
                "source": settings.source(setting.key)}


class _NetSlice:
    def __init__(self, net: NetState) -> None:
        self.net = net


class Networks(_NetSlice):
    """Virtual switches (bridges with DHCP and DNS) and their firewall."""

    async def create(self, name: str, subnet: str, *, dhcp: bool = True,
                     isolated: bool = False) -> dict[str, Any]:
        from corral.service import networks

        return await networks.create(self.net, name, subnet, dhcp, isolated)

    def list(self) -> list[dict[str, Any]]:
        from corral.service import networks

        return networks.list_all(self.net)

    async def get(self, name: str) -> dict[str, Any]:
        from corral.service import networks

        return await networks.show(self.net, name)

    async def rm(self, name: str, *, force: bool = False) -> builtins.list[str]:
        """Remove a network; with ``force`` first detach what uses it (NICs of stopped VMs
        are forgotten, router legs detached). Returns what ``force`` removed."""
        from corral.service import networks

        return await networks.remove_network(self.net, name, force=force)

    async def set_policy(self, name: str, policy: str) -> dict[str, Any]:
        from corral.service import networks

        return await networks.set_policy(self.net, name, policy)

    def topology(self) -> dict[str, Any]:
        from corral.service import netgraph

        return netgraph.topology(self.net)

    def render_topology(self, format: str = "text") -> str:
        """The topology as a text tree or a Graphviz graph (``format="dot"``)."""
        from corral.service import netgraph

        return netgraph.render(netgraph.topology(self.net), format)

    def rules(self) -> dict[str, Any]:
        from corral.service import networks

        return networks.list_rules(self.net)

    async def add_rule(self, target: str, allow: str, source: str = "0.0.0.0/0"
                       ) -> dict[str, Any]:
        from corral.service import networks

        return await networks.add_rule(self.net, target, allow, source)

    async def rm_rule(self, rule_id: int) -> None:
        from corral.service import networks

        await networks.remove_rule(self.net, rule_id)

    async def attach_nic(self, vm: str, network: str, mac: str | None = None,
                         ip: str | None = None) -> dict[str, Any]:
        from corral.service import nics

        return await nics.attach(self.net, vm, network, mac, ip)

    async def detach_nic(self, vm: str, nic: str) -> dict[str, Any]:
        from corral.service import nics

        return await nics.detach(self.net, vm, nic)


class Routers(_NetSlice):
    """Virtual routers (namespaces with forwarding, NAT and port forwards)."""

    async def create(self, name: str, *, uplink: bool = False) -> dict[str, Any]:
        from corral.service import routers

        return await routers.create(self.net, name, uplink)

    def list(self) -> list[dict[str, Any]]:
        from corral.service import routers

        return routers.list_all(self.net)

    def get(self, name: str) -> dict[str, Any]:
        from corral.service import routers

        return routers.view(self.net, name)

    async def rm(self, name: str, *, force: bool = False) -> builtins.list[str]:
        """Remove a router; with ``force`` first detach its legs and forwards. Returns what
        ``force`` removed."""
        from corral.service import routers

        return await routers.remove_router(self.net, name, force=force)

    async def attach(self, name: str, network: str) -> dict[str, Any]:
        from corral.service import routers

        return await routers.attach_network(self.net, name, network)

    async def detach(self, name: str, network: str) -> dict[str, Any]:
        from corral.service import routers

        return await routers.detach_network(self.net, name, network)

    def forwards(self) -> builtins.list[dict[str, Any]]:
        from corral.service import routers

        return [routers.forward_view(f) for f in self.net.db.forwards.values()
                if access.in_scope(self.net.db.project_of("router", f.forward.router))]

    async def add_forward(self, name: str, proto: str, host_port: int, vm: str, port: int
                          ) -> dict[str, Any]:
        from corral.service import routers

        return await routers.add_forward(self.net, name, proto, host_port, vm, port)

    async def rm_forward(self, name: str, proto: str, host_port: int) -> None:
        from corral.service import routers

        await routers.remove_forward(self.net, name, proto, host_port)
