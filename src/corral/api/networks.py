"""The REST routes of virtual networks, their firewall and VMs' NICs (``manager.networks``)::

    POST   /v1/networks                          {name, subnet, dhcp, isolated}
    GET    /v1/networks, /v1/networks/NAME       (one network with leases and counters)
    DELETE /v1/networks/NAME?force=              force: detach what uses it first; answers
                                                 200 {"removed": [...]} (else 204)
    PUT    /v1/networks/NAME/policy              {policy: accept|drop}
    GET    /v1/topology?format=text|dot|json     switches, routers and VMs
    GET    /v1/firewall                          policies and rules
    POST   /v1/firewall/rules                    {target, allow, from}
    DELETE /v1/firewall/rules/ID
    POST   /v1/vms/NAME/nics                     {network, mac, ip}
    DELETE /v1/vms/NAME/nics/NIC
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from corral.api.common import NAME_PATTERN, Name, Page, json, ok, router
from corral.service.manager import Manager
from corral.views import VM, Firewall, FirewallRule, Network, Removed

CIDR = Field(min_length=1, max_length=43, pattern=r"^[0-9a-fA-F.:]+(/\d{1,3})?$")
MAX_RULE_ID = (1 << 63) - 1
NicId = Annotated[str, PathParam(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9:_-]+$",
                                 description="the NIC's id (nic1) or MAC")]


class NetworkCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN, max_length=32)
    subnet: str = CIDR
    dhcp: bool = True
    isolated: bool = False


class PolicyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policy: Literal["accept", "drop"]


class RuleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    target: str = Field(min_length=1, max_length=48, pattern=r"^((vm|network):)?[a-z0-9-]+$")
    allow: str = Field(min_length=1, max_length=16, pattern=r"^[a-z]+(/\d{1,5})?$")
    source: str = Field(default="0.0.0.0/0", alias="from", min_length=1, max_length=43,
                        pattern=r"^[0-9a-fA-F.:]+(/\d{1,3})?$")


class NicAttachRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    network: str = Field(pattern=NAME_PATTERN, max_length=32)
    mac: str | None = Field(None, max_length=17)
    ip: str | None = Field(None, max_length=39)


def routes(m: Manager) -> APIRouter:
    r = router("networks")
    needs_root = (403, 409, 413)

    @r.post("/networks", status_code=201, responses=ok(Network, *needs_root, status=201))
    async def create_network(req: NetworkCreate) -> Response:
        return json(await m.networks.create(req.name, req.subnet, dhcp=req.dhcp,
                                            isolated=req.isolated), 201)

    @r.get("/networks", responses=ok(list[Network]))
    async def list_networks(page: Page) -> Response:
        return page.of(m.networks.list())

    @r.get("/networks/{name}", responses=ok(Network, 404))
    async def show_network(name: Name) -> Response:
        return json(await m.networks.get(name))

    @r.delete("/networks/{name}", status_code=204, responses={
        **ok(Removed, 403, 404, 409), 204: {"description": "Removed"}})
    async def rm_network(name: Name, force: bool = False) -> Response:
        removed = await m.networks.rm(name, force=force)
        return json({"removed": removed}) if force else Response(status_code=204)

    @r.put("/networks/{name}/policy", responses=ok(Network, 403, 404, 413))
    async def set_policy(name: Name, req: PolicyRequest) -> Response:
        return json(await m.networks.set_policy(name, req.policy))

    @r.get("/topology", response_class=PlainTextResponse, responses={
        **ok(None), 200: {"content": {"text/plain": {"schema": {"type": "string"}},
                                      "application/json": {"schema": {"type": "object"}}},
                          "description": "The topology as text, Graphviz dot or JSON"}})
    async def topology(format: Literal["text", "dot", "json"] = "text") -> Response:
        if format == "json":  # networks, routers and user-mode NICs (the web page draws it)
            return json(m.networks.topology())
        return PlainTextResponse(m.networks.render_topology(format))

    @r.get("/firewall", responses=ok(Firewall))
    async def list_rules() -> Response:
        return json(m.networks.rules())

    @r.post("/firewall/rules", status_code=201,
            responses=ok(FirewallRule, *needs_root, 404, status=201))
    async def add_rule(req: RuleRequest) -> Response:
        return json(await m.networks.add_rule(req.target, req.allow, req.source), 201)

    @r.delete("/firewall/rules/{rule_id}", status_code=204, responses=ok(None, 403, 404))
    async def rm_rule(rule_id: Annotated[int, PathParam(ge=1, le=MAX_RULE_ID)]) -> Response:
        await m.networks.rm_rule(rule_id)
        return Response(status_code=204)

    @r.post("/vms/{name}/nics", responses=ok(VM, *needs_root, 404))
    async def attach_nic(name: Name, req: NicAttachRequest) -> Response:
        return json(await m.networks.attach_nic(name, req.network, req.mac, req.ip))

    @r.delete("/vms/{name}/nics/{nic}", responses=ok(VM, 403, 404, 409))
    async def detach_nic(name: Name, nic: NicId) -> Response:
        return json(await m.networks.detach_nic(name, nic))

    return r
