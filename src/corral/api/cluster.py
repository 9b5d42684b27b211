"""The REST routes of the cluster (``manager.cluster``; see :mod:`corral.service.cluster`)::

    GET  /v1/hosts                          every host: state, leader, allocation, VM count
    POST /v1/hosts/HOST/{cordon,uncordon,drain}
    POST /v1/cluster/token                  a new join token for another host
    GET  /v1/vms/NAME/placement             where the VM went and why each host was or not
    POST /v1/vms/NAME/move?to=HOST          move a VM that does not run to another host
    PUT  /v1/cluster/incoming/NAME?source=H (host to host) the export of a VM moved here
    POST /v1/vms/NAME/migrate               live-migrate a running VM (``stream``: NDJSON
                                            progress lines, then the VM)
    POST /v1/vms/NAME/migrate/cancel        stop that migration; the VM runs on
    POST /v1/hosts/HOST/evacuate            drain HOST: live-migrate its VMs off it
    POST|DELETE /v1/cluster/migrate-in/NAME (host to host) a place for an arriving VM; give up
    POST /v1/cluster/migrate-in/NAME/outcome  (host to host) wait until it arrived
    POST /v1/cluster/evacuate               (host to host) move this host's VMs off it

A daemon that is not in a cluster answers 422 to each.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from corral.api.common import Name, json, ok, router
from corral.api.forward import send_file
from corral.api.migrate import migrate_routes
from corral.service import clustermove
from corral.service.manager import Manager
from corral.views import VM, ClusterHost, JoinToken, PlacementExplained

HostName = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


def routes(m: Manager) -> APIRouter:
    r = router("cluster")
    migrate_routes(r, m)  # before /hosts/{host}/{action}, which would take /evacuate

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

    @r.post("/vms/{name}/move", responses=ok(VM, 404, 409, 422, 503))
    async def move_vm(name: Name, to: Annotated[str, Query(
            min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]) -> Response:
        """Move a VM that does not run to host ``to`` (its disks and state copied over the
        TLS API; a saved VM resumes there)."""
        return json(await clustermove.move(m.cluster_member(), name, to, send_file))

    @r.put("/cluster/incoming/{name}", responses=ok(VM, 409, 413, 422, 503))
    async def incoming(name: Name, request: Request, source: Annotated[str, Query(
            min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]) -> Response:
        """(Host to host) a VM moved here from ``source``: the body is its export."""
        member = m.cluster_member()
        file = m.runtime.paths.home / f".incoming-{name}-{uuid.uuid4().hex[:8]}.corral"
        try:
            with file.open("wb") as f:
                async for chunk in request.stream():
                    f.write(chunk)
            return json(await clustermove.receive(member, name, source, file))
        finally:
            file.unlink(missing_ok=True)

    return r
