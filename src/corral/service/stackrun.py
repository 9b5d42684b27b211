"""How each change of a stack's plan is made, through the other slices only (VMs, disks,
snapshots, networks, routers, the guest): one method per action and kind.

A VM is created, given its named disks, started and waited for, then *provisioned*: its
login keys written by the guest agent when it started warm (cloud-init ran before the
snapshot), and its ``provision`` commands run in order (each must exit 0), again each time
the stack starts it (a restart for new memory, a VM found stopped). Removal
tolerates what is already gone, so a removal cut short by a daemon kill can run again.
"""

from __future__ import annotations

import asyncio
import shlex
from typing import TYPE_CHECKING, Any

from corral.domain.states import State
from corral.errors import CorralError, NotFound

if TYPE_CHECKING:
    from corral.service.guest import GuestService
    from corral.service.slices import Disks, Networks, Routers, Snapshots
    from corral.service.vms import VMs

STOP_TIMEOUT = 30.0
SCHED_FIELDS = ("owner", "priority", "expected_runtime", "timeslice", "cpu_weight", "cpu_max",
                "pin")
VM_FIELDS = ("image", "cpus", "memory", "machine", "arch", "cmdline", "user_data",
             "ssh_keys", "hostname", "from_snapshot", *SCHED_FIELDS)


class Runner:
    """Makes, changes and removes one resource of a stack at a time."""

    def __init__(self, vms: VMs, disks: Disks, snapshots: Snapshots, networks: Networks,
                 routers: Routers, guest: GuestService) -> None:
        self.vms = vms
        self.disks = disks
        self.snapshots = snapshots
        self.networks = networks
        self.routers = routers
        self.guest = guest
        self._templates: dict[str, asyncio.Lock] = {}

    async def run(self, change: dict[str, Any], recorded: dict[str, Any] | None
                  ) -> dict[str, Any]:
        """Make ``change`` (an entry of the plan); return what to record beside its spec
        (a firewall rule's id)."""
        action, kind = change["action"], change["kind"]
        if action == "remove":
            await self.remove(kind, change["name"], (recorded or {}).get("extra", {}))
            return {}
        if action == "create":
            made: dict[str, Any] = await getattr(self, f"create_{kind}")(change["name"],
                                                                         change["spec"])
            return made
        if action == "finish":
            if kind == "vm":
                await self.finish_vm(change["name"], change["spec"])
            return dict((recorded or {}).get("extra", {}))
        if action == "update":
            await self.update(kind, change["name"], change["spec"], change["fields"])
        elif action == "restart":
            await self.restart_vm(change["name"], change["spec"])
        return dict((recorded or {}).get("extra", {}))

    # ----- create ----------------------------------------------------------------------------
    async def create_network(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        await self.networks.create(name, spec["subnet"], dhcp=spec["dhcp"],
                                   isolated=spec["isolated"])
        return {}

    async def create_disk(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        await self.disks.create(name, spec["size"], spec["format"])
        return {}

    async def create_router(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        await self.routers.create(name, uplink=spec["uplink"])
        for network in spec["networks"]:
            await self.routers.attach(name, network)
        return {}

    @staticmethod
    def vm_body(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        """The request that creates the stack's VM ``name`` of ``spec``."""
        body: dict[str, Any] = {"name": name, **{k: spec[k] for k in VM_FIELDS if k in spec}}
        body["nics"] = spec["nics"] or None
        if spec.get("from_snapshot"):
            body.pop("ssh_keys", None)  # written by the agent: cloud-init ran before
        return body

    async def create_vm(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = self.vm_body(name, spec)
        if spec.get("from_snapshot"):
            # the first warm start of a snapshot makes its template: the others wait for it
            lock = self._templates.setdefault(spec["from_snapshot"], asyncio.Lock())
            async with lock:
                await self.vms.create(body)  # a warm start runs at once
            await self.vms.wait_ready(name)
        else:
            await self.vms.create(body)
            for disk in spec.get("disks", []):
                await self.disks.attach(name, disk)
            if spec["start"]:
                await self.vms.start(name, wait=True)
        if spec["start"]:
            await self.provision(name, spec)
        return {}

    async def create_snapshot(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        vm, _, snap = name.partition(":")
        await self.snapshots.create(vm, snap, memory=spec["memory"])
        return {}

    async def create_forward(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        router, proto, port = name.split(":")
        await self.routers.add_forward(router, proto, int(port), spec["vm"], spec["port"])
        return {}

    async def create_rule(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        rule = await self.networks.add_rule(spec["target"], spec["allow"], spec["source"])
        return {"rule_id": rule["id"]}

    # ----- VMs: start, provision, restart ------------------------------------------------------
    async def provision(self, name: str, spec: dict[str, Any]) -> None:
        """Write the login keys of a warm start, then run the provision commands.

        :raises CorralError: a command exits with a non-zero status (its output is in the
            message).
        """
        steps = list(spec.get("provision", []))
        if spec.get("from_snapshot") and spec.get("ssh_keys"):
            await self.guest.exec(name, ["mkdir", "-p", "/root/.ssh"])
            await self.guest.write_file(name, "/root/.ssh/authorized_keys",
                                        ("\n".join(spec["ssh_keys"]) + "\n").encode())
            steps.insert(0, "chmod 700 /root/.ssh && chmod 600 /root/.ssh/authorized_keys")
        for i, command in enumerate(steps):
            res = await self.guest.exec(name, ["sh", "-c", command], timeout=300)
            if res.get("exitcode") or res.get("signal"):
                err = (res["stderr"] or res["stdout"]).decode(errors="replace").strip()
                raise CorralError(f"provision step {i + 1} ({shlex.quote(command)[:60]}) "
                                  f"exited with {res.get('exitcode')}: {err[-200:]}")

    async def finish_vm(self, name: str, spec: dict[str, Any]) -> None:
        """Complete a VM whose making was cut short: start it if it does not run, wait for
        it, provision it."""
        if not spec["start"]:
            return
        view = await self.vms.get(name)
        if view["state"] in (State.DEFINED.value, State.STOPPED.value, State.CRASHED.value,
                             State.SAVED.value):
            await self.vms.start(name, wait=True)
        else:
            await self.vms.wait_ready(name)
        await self.provision(name, spec)

    async def restart_vm(self, name: str, spec: dict[str, Any]) -> None:
        view = await self.vms.get(name)
        if view["state"] in (State.RUNNING.value, State.PAUSED.value):
            await self.vms.shutdown(name, timeout=STOP_TIMEOUT)
        await self.vms.set_hardware(name, cpus=spec["cpus"], memory=spec["memory"])
        if spec["start"]:
            await self.vms.start(name, wait=True)
            await self.provision(name, spec)

    # ----- update and remove -----------------------------------------------------------------
    async def update(self, kind: str, name: str, spec: dict[str, Any],
                     fields: list[dict[str, Any]]) -> None:
        for f in fields:
            if kind == "router" and f["field"] == "networks":
                for network in sorted(set(f["new"]) - set(f["old"])):
                    await self.routers.attach(name, network)
                for network in sorted(set(f["old"]) - set(f["new"])):
                    await self.routers.detach(name, network)
            elif kind == "disk" and f["field"] == "size":
                await self.disks.resize(name, f["new"])
            elif kind == "vm" and f["field"] == "state":
                await self.finish_vm(name, spec)
            elif kind == "vm" and f["field"] == "start":
                if f["new"]:
                    await self.finish_vm(name, spec)
                else:
                    await self.vms.shutdown(name, timeout=STOP_TIMEOUT)

    async def remove(self, kind: str, name: str, extra: dict[str, Any]) -> None:
        try:
            if kind == "network":
                await self.networks.rm(name)
            elif kind == "disk":
                await self.disks.rm(name)
            elif kind == "router":
                await self.routers.rm(name, force=True)
            elif kind == "vm":
                await self.vms.rm(name)
            elif kind == "snapshot":
                vm, _, snap = name.partition(":")
                await self.snapshots.rm(vm, snap)
            elif kind == "forward":
                router, proto, port = name.split(":")
                await self.routers.rm_forward(router, proto, int(port))
            elif kind == "rule" and "rule_id" in extra:
                await self.networks.rm_rule(int(extra["rule_id"]))
        except NotFound:
            pass  # gone already (with its VM, or by an earlier removal cut short)
