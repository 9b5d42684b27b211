"""Stacks: sets of resources described in one YAML file, planned and applied by the daemon
(``corral plan``, ``corral apply``, ``corral stack list|show|rm|schema``).

The daemon records which resources belong to which stack, in the store (one document
``stack:NAME``): each resource's spec as last applied and its state, ``pending`` from the
moment its making starts, ``made`` once done. So an apply cut short (a failure, a daemon
killed) is continued by the next one: a pending resource that exists is finished, never
made twice. One apply (or removal) of a stack runs at a time; another is refused at once.

An apply plans first (:mod:`corral.domain.stackplan`), then removes what went from the
file (dependents first), then makes and changes the rest in dependency order, each
resource as soon as what it needs is done, up to :data:`PARALLEL` at once. A failure stops
what has not started, lets what runs finish, and says which resource failed and why; what
was made stays recorded. Progress comes out as events (:meth:`Stacks.apply`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from corral.errors import CorralError, InvalidSpec, InvalidState, NotFound
from corral.service.stackrun import Runner

if TYPE_CHECKING:
    from corral.domain import stackfile, stackgraph
    from corral.service.runtime import VMRuntime

DOC = "stack:"
PARALLEL = 4


class Stacks:
    """Declarative stacks over the other slices."""

    def __init__(self, rt: VMRuntime, runner: Runner) -> None:
        self.rt = rt
        self.runner = runner
        self._busy: set[str] = set()

    # ----- read ------------------------------------------------------------------------------
    def schema(self) -> dict[str, Any]:
        from corral.domain import stackfile

        return stackfile.schema()

    def list(self) -> list[dict[str, Any]]:
        return [_summary(doc) for doc in self.rt.db.list_docs(DOC).values()]

    def get(self, name: str) -> dict[str, Any]:
        """:raises NotFound: no stack of that name."""
        doc = self.rt.db.get_doc(DOC + name)
        if doc is None:
            raise NotFound(f"no stack named '{name}'; see 'corral stack list'")
        return {**_summary(doc), "resources": [
            {"id": rid, **{k: r[k] for k in ("kind", "name", "state", "spec")}}
            for rid, r in doc["resources"].items()]}

    async def plan(self, text: str, file: str, name: str | None = None) -> dict[str, Any]:
        """What applying ``text`` would do, changing nothing.

        :raises InvalidSpec: the file is wrong (the message names file, line and field).
        """
        from corral.domain import stackgraph, stackplan

        loaded, stack = _load(text, file, name)
        doc = self.rt.db.get_doc(DOC + stack) or _new_doc(stack, file)
        existing = await self._existing(doc)
        desired = stackgraph.build(loaded, existing)
        self._check_networks(loaded, desired, existing)
        self._check_vms(loaded, desired, existing)
        try:
            changes = stackplan.plan(desired, doc["resources"], existing, loaded.line)
        except stackplan.Conflict as err:
            raise loaded.error(desired[err.rid].path, str(err)) from err
        summary = stackplan.summary(changes)
        return {"stack": stack, "file": file, "changes": changes, "summary": summary,
                "noop": summary["keep"] == len(changes)}

    def _check_networks(self, loaded: stackfile.Loaded,
                        desired: dict[str, stackgraph.Resource],
                        existing: stackgraph.Existing) -> None:
        """Refuse a network still to make whose subnet overlaps another's (the stack's, or
        one the daemon has), as its creation would half-way through the apply.

        :raises InvalidSpec: naming the file's line and field.
        """
        from ipaddress import IPv4Network

        from corral.host.network.ipam import TRANSFER_POOL

        nets = [r for r in desired.values() if r.kind == "network"]
        mine = {r.name for r in nets}
        others = {f"network '{n['name']}'": IPv4Network(n["subnet"])
                  for n in self.runner.networks.list() if n["name"] not in mine}
        others["the uplink transfer pool"] = TRANSFER_POOL
        for res in nets:
            subnet = IPv4Network(res.spec["subnet"])
            if not existing.has(res.id):
                for what, other in others.items():
                    if subnet.overlaps(other):
                        raise loaded.error((*res.path, "subnet"),
                                           f"{subnet} overlaps {what} ({other})")
            others[f"network '{res.name}'"] = subnet

    def _check_vms(self, loaded: stackfile.Loaded, desired: dict[str, stackgraph.Resource],
                   existing: stackgraph.Existing) -> None:
        """Refuse the VMs still to make as their creation would (and new hardware of those
        that exist), so that a wrong value stops the plan before anything is made (against
        this host only when it is not one of a cluster's: another host may have more
        memory, or images this one has not).

        :raises InvalidSpec: naming the file's line and field.
        """
        for res in desired.values():
            if res.kind == "vm":
                try:
                    self.runner.vms.check(self.runner.vm_body(res.name, res.spec),
                                          host=self.rt.db.host is None,
                                          exists=existing.has(res.id))
                except InvalidSpec as err:
                    field = tuple(int(p) if p.isdigit() else p for p in err.field.split("."))
                    raise loaded.error((*res.path, *field),
                                       err.message.removeprefix(f"{err.field}: ")) from err

    async def _existing(self, doc: dict[str, Any]) -> stackgraph.Existing:
        """What the daemon has now, named as stacks name it."""
        from corral.domain import stackgraph

        views = self.runner.vms.list()
        vms = [v["name"] for v in views]
        snaps = {f"{vm}:{s['name']}" for vm in vms for s in self.runner.snapshots.list(vm)}
        rule_ids = {r["id"] for r in self.runner.networks.rules()["rules"]}
        rules = {r["name"] for r in doc["resources"].values()
                 if r["kind"] == "rule" and r.get("extra", {}).get("rule_id") in rule_ids}
        return stackgraph.Existing({
            "network": {n["name"] for n in self.runner.networks.list()},
            "disk": {d["name"] for d in await self.runner.disks.list()},
            "router": {r["name"] for r in self.runner.routers.list()},
            "vm": set(vms), "snapshot": snaps,
            "forward": {f"{f['router']}:{f['proto']}:{f['host_port']}"
                        for f in self.runner.routers.forwards()},
            "rule": rules}, {v["name"]: v["state"] for v in views})

    # ----- apply -----------------------------------------------------------------------------
    async def apply(self, text: str, file: str, name: str | None = None,
                    dry_run: bool = False) -> AsyncIterator[dict[str, Any]]:
        """Plan, then (unless ``dry_run``) make the changes; yields ``{"event": "plan"}``
        first (before anything is made), then ``begin``/``done``/``failed``/``skipped`` per
        resource and ``end`` last. The apply itself runs on whatever the caller does: a
        caller that goes away does not stop it.

        :raises InvalidSpec: the file is wrong. :raises InvalidState: the stack is being
            applied or removed already.
        """
        _, stack = _load(text, file, name)
        self._claim(stack, "apply")
        try:
            plan = await self.plan(text, file, name)
        except BaseException:
            self._busy.discard(stack)
            raise
        return self._stream(stack, plan, dry_run)

    async def rm(self, name: str) -> AsyncIterator[dict[str, Any]]:
        """Remove every resource of stack ``name`` (dependents first), then its record.

        :raises NotFound: no such stack. :raises InvalidState: it is being applied.
        """
        from corral.domain import stackgraph, stackplan

        doc = self.rt.db.get_doc(DOC + name)
        if doc is None:
            raise NotFound(f"no stack named '{name}'; see 'corral stack list'")
        self._claim(name, "remove")
        removals = stackplan.plan({}, doc["resources"], stackgraph.Existing(), lambda _p: 1)
        plan = {"stack": name, "file": doc["file"], "changes": removals,
                "summary": stackplan.summary(removals), "noop": False}
        return self._stream(name, plan, False, remove=True)

    def _claim(self, stack: str, what: str) -> None:
        if stack in self._busy:
            raise InvalidState(stack, what, "busy: another apply or removal of it is running",
                               ["idle"], what="stack")
        self._busy.add(stack)

    def _stream(self, stack: str, plan: dict[str, Any], dry_run: bool,
                remove: bool = False) -> AsyncIterator[dict[str, Any]]:
        events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        events.put_nowait({"event": "plan", "plan": plan, "dry_run": dry_run})

        async def work() -> None:
            try:
                if not dry_run:
                    await _Apply(self, plan, events.put_nowait, remove).run()
                else:
                    events.put_nowait({"event": "end", "ok": True, "stack": stack})
            finally:
                self._busy.discard(stack)
                events.put_nowait(None)

        self.rt.background(work())

        async def drain() -> AsyncIterator[dict[str, Any]]:
            while (event := await events.get()) is not None:
                yield event

        return drain()


class _Apply:
    """One run of a plan."""

    def __init__(self, stacks: Stacks, plan: dict[str, Any], emit: Any, remove: bool) -> None:
        self.s = stacks
        self.plan = plan
        self.emit = emit
        self.remove = remove
        self.key = DOC + plan["stack"]
        self.doc = stacks.rt.db.get_doc(self.key) or _new_doc(plan["stack"], plan["file"])
        self.failed: tuple[str, CorralError] | None = None

    def save(self, kind: str | None = None, **detail: Any) -> None:
        self.doc["updated_at"] = time.time()
        self.s.rt.db.put_doc(self.key, self.doc, kind=kind, detail=detail)

    async def run(self) -> None:
        from corral.domain import stackplan

        self.doc["file"] = self.plan["file"]
        self.doc["status"] = "removing" if self.remove else "applying"
        self.save("stack_apply_started" if not self.remove else "stack_rm_started",
                  summary=self.plan["summary"])
        changes = self.plan["changes"]
        first = [c for c in changes if c["action"] in ("remove", "replace")]
        for change in stackplan.reverse_order(first):
            if self.failed:
                self.emit({"event": "skipped", "id": change["id"]})
                continue
            await self.one(change, removing=True)
        rest = [c for c in changes if c["action"] not in ("remove", "keep")]
        await self.in_order(rest)
        self.finish()

    async def in_order(self, changes: list[dict[str, Any]]) -> None:
        """Each change once the changes it depends on are done, :data:`PARALLEL` at once."""
        done = {c["id"]: asyncio.Event() for c in changes}
        limit = asyncio.Semaphore(PARALLEL)

        async def one(change: dict[str, Any]) -> None:
            try:
                for dep in change["deps"]:
                    if dep in done:
                        await done[dep].wait()
                if self.failed:
                    self.emit({"event": "skipped", "id": change["id"]})
                    return
                async with limit:
                    await self.one(change)
            finally:
                done[change["id"]].set()

        await asyncio.gather(*(one(c) for c in changes))

    async def one(self, change: dict[str, Any], removing: bool = False) -> None:
        """Make one change and record it: ``pending`` before (a new resource with its new
        spec, a changed one with its old spec, so that a cut-short change is planned
        again), ``made`` after; a removal drops the record once done."""
        rid, res = change["id"], self.doc["resources"]
        recorded = res.get(rid)
        if removing:
            label = "remove" if change["action"] == "remove" else "remove (to replace)"
            step = {**change, "action": "remove"}
        else:
            label = change["action"]
            step = {**change, "action": "create" if label == "replace" else label}
            kept = recorded is not None and step["action"] != "create"
            res[rid] = {"kind": change["kind"], "name": change["name"],
                        "spec": recorded["spec"] if kept and recorded else change["spec"],
                        "deps": change["deps"], "state": "pending",
                        "extra": (recorded or {}).get("extra", {})}
            self.save()
        self.emit({"event": "begin", "id": rid, "action": label})
        t0 = time.monotonic()
        try:
            extra = await self.s.runner.run(step, recorded)
        except Exception as err:  # every failure is told, as the resource's
            failure = err if isinstance(err, CorralError) else CorralError(
                f"{type(err).__name__}: {err}")
            self.failed = (rid, failure)
            self.emit({"event": "failed", "id": rid, "error": failure.to_dict()})
            return
        if removing:
            res.pop(rid, None)
        else:
            res[rid] = {"kind": change["kind"], "name": change["name"], "spec": change["spec"],
                        "deps": change["deps"], "state": "made", "extra": extra}
        self.save()
        self.emit({"event": "done", "id": rid, "action": label,
                   "seconds": round(time.monotonic() - t0, 3)})

    def finish(self) -> None:
        ok = self.failed is None
        end: dict[str, Any] = {"event": "end", "ok": ok, "stack": self.plan["stack"]}
        if self.failed:
            rid, err = self.failed
            end["failed"] = rid
            end["error"] = {**err.to_dict(), "message": f"{rid}: {err.message}"}
        if ok and self.remove:
            self.s.rt.db.delete_doc(self.key, "stack_removed", {})
        else:
            self.doc["status"] = "applied" if ok else "failed"
            self.doc["error"] = None if ok else end["error"]["message"]
            self.save("stack_applied" if ok else "stack_failed",
                      **({} if ok else {"failed": end["failed"]}))
        self.emit(end)


def _load(text: str, file: str, name: str | None) -> tuple[stackfile.Loaded, str]:
    import os

    from corral.domain import stackfile

    loaded = stackfile.load(text, file)
    stack = name or loaded.stack.name or os.path.splitext(os.path.basename(file))[0]
    from corral.domain.specs import NAME_RE

    if not NAME_RE.match(stack):
        raise loaded.error(("name",), f"'{stack}' is not a valid stack name; give name: in "
                                      "the file")
    return loaded, stack


def _new_doc(name: str, file: str) -> dict[str, Any]:
    return {"name": name, "file": file, "status": "new", "created_at": time.time(),
            "updated_at": time.time(), "error": None, "resources": {}}


def _summary(doc: dict[str, Any]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for r in doc["resources"].values():
        counts[r["kind"]] = counts.get(r["kind"], 0) + 1
    return {"name": doc["name"], "file": doc["file"], "status": doc["status"],
            "error": doc.get("error"), "updated_at": doc["updated_at"],
            "counts": counts, "pending": sorted(rid for rid, r in doc["resources"].items()
                                                if r["state"] == "pending")}

