"""The views of warm pools: a pool, a hand-out and a sizing recommendation."""

from __future__ import annotations

from corral.views._typed import TypedDict


class PoolTake(TypedDict):
    name: str
    hit: bool          # a free clone was handed out (else: a warm start, a miss)
    clone: str | None  # the clone's name in the pool
    seconds: float     # request → running


class Pool(TypedDict):
    name: str
    project: str
    source: str        # VM:SNAPSHOT
    size: int
    max: int
    free: int
    clones: list[str]
    filling: str | None
    autosize: bool
    target_wait: float
    ahead_of_queue: bool  # its refills may go ahead of the admission queue
    handouts: int
    misses: int
    replaced: int      # clones that crashed while waiting, replaced
    refill_seconds: float | None   # mean warm start to ready of its clones
    handout_seconds: float | None  # median request → running of its hand-outs
    note: str | None   # why it holds fewer than its size, if it does
    drained: bool
    created_at: float


class PoolRecommendation(TypedDict):
    size: int
    arrival_rate: float
    refill_time: float
    target_wait: float
    mean_wait: float
    miss_probability: float
    offered_load: float
    running_vms: float | None
    curve: list[dict[str, float]]
