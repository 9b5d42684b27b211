"""The REST routes of virtual networks, routers, firewall rules and VMs' NICs.

Like every route, each parses the request into one service call and owns no logic::

    POST   /v1/networks                          {name, subnet, dhcp, isolated}
    GET    /v1/networks, /v1/networks/NAME       (one network with leases and counters)
    DELETE /v1/networks/NAME
    PUT    /v1/networks/NAME/policy              {policy: accept|drop}
    GET    /v1/topology?format=text|dot          switches, routers and VMs
    POST   /v1/routers                           {name, uplink}
    GET    /v1/routers, /v1/routers/NAME
    DELETE /v1/routers/NAME
    POST   /v1/routers/NAME/networks             {network}
    DELETE /v1/routers/NAME/networks/NET
    GET    /v1/forwards
    POST   /v1/routers/NAME/forwards             {proto, host_port, vm, port}
    DELETE /v1/routers/NAME/forwards/PROTO/PORT
    GET    /v1/firewall                          policies and rules
    POST   /v1/firewall/rules                    {target, allow, from}
    DELETE /v1/firewall/rules/ID
    POST   /v1/vms/NAME/nics                     {network, mac, ip}
    DELETE /v1/vms/NAME/nics/NIC
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from corral.service import netgraph
from corral.service.manager import Manager


class NetworkCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    subnet: str
    dhcp: bool = True
    isolated: bool = False


class PolicyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policy: Literal["accept", "drop"]


class RouterCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    uplink: bool = False


class LegRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    network: str


class ForwardRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    proto: str = "tcp"
    host_port: int
    vm: str
    port: int


class RuleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    target: str
    allow: str
    source: str = Field(default="0.0.0.0/0", alias="from")


class NicAttachRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    network: str
    mac: str | None = None
    ip: str | None = None


def routes(m: Manager) -> APIRouter:
    """The routes, bound to ``m``."""
    r = APIRouter(prefix="/v1")

    @r.post("/networks", status_code=201)
    async def create_network(req: NetworkCreate) -> dict[str, Any]:
        return await m.networks.create(req.name, req.subnet, dhcp=req.dhcp, isolated=req.isolated)

    @r.get("/networks")
    async def list_networks() -> list[dict[str, Any]]:
        return m.networks.list()

    @r.get("/networks/{name}")
    async def show_network(name: str) -> dict[str, Any]:
        return await m.networks.get(name)

    @r.delete("/networks/{name}", status_code=204)
    async def remove_network(name: str) -> None:
        await m.networks.rm(name)

    @r.put("/networks/{name}/policy")
    async def set_policy(name: str, req: PolicyRequest) -> dict[str, Any]:
        return await m.networks.set_policy(name, req.policy)

    @r.get("/topology")
    async def topology(format: Literal["text", "dot"] = "text") -> PlainTextResponse:
        return PlainTextResponse(netgraph.render(m.networks.topology(), format))

    @r.post("/routers", status_code=201)
    async def create_router(req: RouterCreate) -> dict[str, Any]:
        return await m.routers.create(req.name, uplink=req.uplink)

    @r.get("/routers")
    async def list_routers() -> list[dict[str, Any]]:
        return m.routers.list()

    @r.get("/routers/{name}")
    async def show_router(name: str) -> dict[str, Any]:
        return m.routers.get(name)

    @r.delete("/routers/{name}", status_code=204)
    async def remove_router(name: str) -> None:
        await m.routers.rm(name)

    @r.post("/routers/{name}/networks")
    async def attach_network(name: str, req: LegRequest) -> dict[str, Any]:
        return await m.routers.attach(name, req.network)

    @r.delete("/routers/{name}/networks/{network}")
    async def detach_network(name: str, network: str) -> dict[str, Any]:
        return await m.routers.detach(name, network)

    @r.get("/forwards")
    async def list_forwards() -> list[dict[str, Any]]:
        return m.routers.forwards()

    @r.post("/routers/{name}/forwards", status_code=201)
    async def add_forward(name: str, req: ForwardRequest) -> dict[str, Any]:
        return await m.routers.add_forward(name, req.proto, req.host_port, req.vm, req.port)

    @r.delete("/routers/{name}/forwards/{proto}/{host_port}", status_code=204)
    async def remove_forward(name: str, proto: str, host_port: int) -> None:
        await m.routers.rm_forward(name, proto, host_port)

    @r.get("/firewall")
    async def list_rules() -> dict[str, Any]:
        return m.networks.rules()

    @r.post("/firewall/rules", status_code=201)
    async def add_rule(req: RuleRequest) -> dict[str, Any]:
        return await m.networks.add_rule(req.target, req.allow, req.source)

    @r.delete("/firewall/rules/{rule_id}", status_code=204)
    async def remove_rule(rule_id: int) -> None:
        await m.networks.rm_rule(rule_id)

    @r.post("/vms/{name}/nics")
    async def attach_nic(name: str, req: NicAttachRequest) -> dict[str, Any]:
        return await m.networks.attach_nic(name, req.network, req.mac, req.ip)

    @r.delete("/vms/{name}/nics/{nic}")
    async def detach_nic(name: str, nic: str) -> dict[str, Any]:
        return await m.networks.detach_nic(name, nic)

    return r
