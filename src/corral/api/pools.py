"""The REST routes of warm pools; each is one call of ``manager.pools``::

    POST   /v1/pools                   {name, from_snapshot, size, max, autosize, target_wait,
                                        ahead_of_queue}
    GET    /v1/pools, /v1/pools/NAME
    POST   /v1/pools/NAME/resize       {size, max, autosize, ahead_of_queue}
    DELETE /v1/pools/NAME              removes its free clones too: {"removed": [...]}
    POST   /v1/pools/NAME/take?timeout= {name, pool_only}: a running VM from the pool
    POST   /v1/pools/NAME/batch        {argv, timeout, pool_only}: run a command, remove the VM
    POST   /v1/pools/recommend         {arrival_rate, target_wait, runtime, refill_time, pool}
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from corral.api.common import MAX_TIMEOUT, NAME_PATTERN, Name, json, ok, router, timeout
from corral.api.guest import MAX_ARGS, bounded
from corral.service.manager import Manager
from corral.views import VM, BatchResult, Pool, PoolRecommendation, Removed

MAX_SIZE = 256
MAX_RATE = 1e6
Rate = Field(gt=0, le=MAX_RATE, allow_inf_nan=False)


class PoolCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN, max_length=24)
    from_snapshot: str = Field(min_length=3, max_length=70)
    size: int = Field(ge=0, le=MAX_SIZE)
    max: int | None = Field(None, ge=0, le=MAX_SIZE)
    autosize: bool = False
    target_wait: float = Field(0.05, ge=0, le=MAX_TIMEOUT, allow_inf_nan=False)
    ahead_of_queue: bool = False


class PoolResize(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int = Field(ge=0, le=MAX_SIZE)
    max: int | None = Field(None, ge=0, le=MAX_SIZE)
    autosize: bool | None = None
    ahead_of_queue: bool | None = None


class PoolTakeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN, max_length=32)
    pool_only: bool = False


class PoolBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    argv: list[str] = Field(min_length=1, max_length=MAX_ARGS)
    timeout: float = Field(600.0, gt=0, le=MAX_TIMEOUT, allow_inf_nan=False)
    pool_only: bool = False

    @field_validator("argv")
    @classmethod
    def _argv(cls, v: list[str]) -> list[str]:
        return bounded(v, "argv")


class Recommend(BaseModel):
    model_config = ConfigDict(extra="forbid")
    arrival_rate: float = Rate
    target_wait: float = Field(ge=0, le=MAX_TIMEOUT, allow_inf_nan=False)
    runtime: float | None = Field(None, gt=0, le=MAX_TIMEOUT * 366, allow_inf_nan=False)
    refill_time: float | None = Field(None, gt=0, le=MAX_TIMEOUT, allow_inf_nan=False)
    pool: str | None = Field(None, pattern=NAME_PATTERN, max_length=24)


def routes(m: Manager) -> APIRouter:
    r = router("pools")

    @r.post("/pools/recommend", responses=ok(PoolRecommendation, 404))
    async def recommend_pool(req: Recommend) -> Response:
        return json(m.pools.recommend(req.arrival_rate, req.target_wait, req.runtime,
                                      req.refill_time, req.pool))

    @r.post("/pools", status_code=201, responses=ok(Pool, 404, 409, 504, status=201))
    async def create_pool(req: PoolCreate) -> Response:
        return json(await m.pools.create(req.name, req.from_snapshot, req.size, req.max,
                                         req.autosize, req.target_wait,
                                         req.ahead_of_queue), 201)

    @r.get("/pools", responses=ok(list[Pool]))
    async def list_pools() -> Response:
        return json(m.pools.list())

    @r.get("/pools/{name}", responses=ok(Pool, 404))
    async def get_pool(name: Name) -> Response:
        return json(m.pools.get(name))

    @r.post("/pools/{name}/resize", responses=ok(Pool, 404))
    async def resize_pool(name: Name, req: PoolResize) -> Response:
        return json(m.pools.resize(name, req.size, req.max, req.autosize,
                                   req.ahead_of_queue))

    @r.delete("/pools/{name}", responses=ok(Removed, 404))
    async def rm_pool(name: Name) -> Response:
        return json({"removed": await m.pools.rm(name)})

    @r.post("/pools/{name}/take", status_code=201,
            responses=ok(VM, 404, 409, 504, status=201))
    async def take_from_pool(name: Name, req: PoolTakeRequest,
                             timeout: float = timeout(120.0, "seconds to wait for a VM")
                             ) -> Response:
        return json(await m.pools.take(name, req.name, req.pool_only, timeout), 201)

    @r.post("/pools/{name}/batch", responses=ok(BatchResult, 404, 409, 502, 504))
    async def batch_from_pool(name: Name, req: PoolBatch) -> Response:
        return json(await m.pools.batch(name, req.argv, req.timeout, req.pool_only))

    return r
