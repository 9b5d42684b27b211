"""The REST routes of the cluster (``manager.cluster``; see :mod:`corral.service.cluster`)::

    GET  /v1/hosts                          every host: state, leader, allocation, VM count
    POST /v1/hosts/HOST/{cordon,uncordon,drain}
    POST /v1/cluster/token                  a new join token for another host
    GET  /v1/vms/NAME/placement             where the VM went and why each host was or not

A daemon that is not in a cluster answers 422 to each.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path
from fastapi.responses import Response

from corral.api.common import Name, json, ok, router
from corral.service.manager import Manager
from corral.views import ClusterHost, JoinToken, PlacementExplained

HostName = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


def routes(m: Manager) -> APIRouter:
    r = router("cluster")

    @r.get("/hosts", responses=ok(list[ClusterHost], 422, 503))
    async def list_hosts() -> Response:
        return json(await m.cluster_member().hosts())

    @r.post("/hosts/{host}/{action}", responses=ok(ClusterHost, 404, 422, 503))
    async def host_admin(host: HostName,
                         action: Literal["cordon", "uncordon", "drain"]) -> Response:
        return json(await m.cluster_member().set_admin(host, action))

    @r.post("/cluster/token", responses=ok(JoinToken, 422, 503))
    async def join_token() -> Response:
        return json(await m.cluster_member().new_token())

    @r.get("/vms/{name}/placement", responses=ok(PlacementExplained, 404, 422, 503))
    async def placement(name: Name) -> Response:
        return json(await m.cluster_member().placement(name))

    return r
