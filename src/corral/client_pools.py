"""The warm-pool calls of ``corral.Client`` (the routes of :mod:`corral.api.pools`)."""

from __future__ import annotations

from corral.wire import Connection, integer, seconds, seg

TYPE_CHECKING = False  # typing is slow to import; the CLI must start in milliseconds
if TYPE_CHECKING:
    import builtins
    from collections.abc import Sequence

    from corral import views

MAX_SIZE = 256


class PoolCalls(Connection):
    def pool_create(self, name: str, from_snapshot: str, size: int,
                    max_size: int | None = None, autosize: bool = False,
                    target_wait: float | None = None, ahead_of_queue: bool = False
                    ) -> views.Pool:
        """Keep ``size`` clones of the memory snapshot ``from_snapshot`` ("VM:SNAPSHOT")
        restored and paused; ``autosize`` lets the daemon size it (up to ``max_size``) for
        a mean wait of ``target_wait`` seconds. Its refills wait behind VMs queued for
        capacity unless ``ahead_of_queue``.

        :raises InvalidSpec: a bad name, size or snapshot. :raises NotFound: no such VM
            or snapshot. :raises AlreadyExists: the pool exists.
        """
        seg(name)
        integer(size, "size", 0, MAX_SIZE)
        integer(max_size, "max", 0, MAX_SIZE)
        body = {"name": name, "from_snapshot": from_snapshot, "size": size,
                "max": max_size, "autosize": autosize,
                "target_wait": seconds(target_wait, "target_wait"),
                "ahead_of_queue": ahead_of_queue or None}
        out: views.Pool = self.request("POST", "/pools",
                                       {k: v for k, v in body.items() if v is not None})
        return out

    def pool_list(self) -> builtins.list[views.Pool]:
        out: builtins.list[views.Pool] = self.request("GET", "/pools")
        return out

    def pool_show(self, name: str) -> views.Pool:
        out: views.Pool = self.request("GET", f"/pools/{seg(name)}")
        return out

    def pool_resize(self, name: str, size: int, max_size: int | None = None,
                    autosize: bool | None = None, ahead_of_queue: bool | None = None
                    ) -> views.Pool:
        integer(size, "size", 0, MAX_SIZE)
        integer(max_size, "max", 0, MAX_SIZE)
        body = {"size": size, "max": max_size, "autosize": autosize,
                "ahead_of_queue": ahead_of_queue}
        out: views.Pool = self.request("POST", f"/pools/{seg(name)}/resize",
                                       {k: v for k, v in body.items() if v is not None})
        return out

    def pool_rm(self, name: str) -> builtins.list[str]:
        """Remove a pool and its free clones (VMs handed out stay); the clones removed."""
        out = self.request("DELETE", f"/pools/{seg(name)}")
        return list(out["removed"]) if out else []

    def pool_take(self, pool: str, name: str, pool_only: bool = False,
                  timeout: float | None = None) -> views.VM:
        """A running VM ``name`` from ``pool`` (a warm start when it is empty, unless
        ``pool_only``: then wait for its next clone). ``out["pool"]`` says which."""
        seg(name)
        out: views.VM = self.request("POST", f"/pools/{seg(pool, 'pool')}/take",
                                     {"name": name, "pool_only": pool_only},
                                     timeout=seconds(timeout))
        return out

    def pool_batch(self, pool: str, argv: Sequence[str], timeout: float = 600.0,
                   pool_only: bool = False) -> views.BatchResult:
        """Run ``argv`` in a VM from ``pool`` and remove it; stdout/stderr as bytes."""
        import base64

        out: views.BatchResult = self.request(
            "POST", f"/pools/{seg(pool, 'pool')}/batch",
            {"argv": list(argv), "timeout": seconds(timeout), "pool_only": pool_only})
        out["stdout"] = base64.b64decode(out["stdout"])
        out["stderr"] = base64.b64decode(out["stderr"])
        return out

    def pool_recommend(self, arrival_rate: float, target_wait: float,
                       runtime: float | None = None, refill_time: float | None = None,
                       pool: str | None = None) -> views.PoolRecommendation:
        """The smallest pool whose mean wait meets ``target_wait`` (Erlang C), on
        ``refill_time`` or the refill time ``pool`` measured."""
        if pool is not None:
            seg(pool, "pool")
        body = {"arrival_rate": arrival_rate, "target_wait": target_wait,
                "runtime": runtime, "refill_time": refill_time, "pool": pool}
        out: views.PoolRecommendation = self.request(
            "POST", "/pools/recommend", {k: v for k, v in body.items() if v is not None})
        return out
