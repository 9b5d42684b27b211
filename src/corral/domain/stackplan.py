"""What an apply would do: the stack as written against the stack as recorded (and what the
daemon has), field by field. Pure.

Each resource gets one action:

* ``create``: new, or recorded but gone from the daemon;
* ``finish``: recorded as being made when an apply was cut short, and found made: the
  apply completes it (a VM is started and provisioned) instead of making it twice;
* ``update``: changed fields that change in place (a router's networks, a disk that grows,
  whether a VM runs);
* ``restart``: a VM whose CPUs or memory change: it is stopped, changed and started;
* ``replace``: a field that cannot change in place: removed, then made anew (and so is
  what depends on it);
* ``remove``: recorded, no longer written (removed in reverse order);
* ``keep``: nothing to do.
"""

from __future__ import annotations

from typing import Any

from corral.domain.stackgraph import Existing, Resource

#: per kind, the fields that change in place, and those that need the VM restarted
LIVE_FIELDS: dict[str, frozenset[str]] = {
    "router": frozenset({"networks"}),
    "disk": frozenset({"size"}),
    "vm": frozenset({"start", "provision"}),
}
RESTART_FIELDS = frozenset({"cpus", "memory"})
ACTIONS = ("create", "finish", "update", "restart", "replace", "remove", "keep")


class Conflict(ValueError):
    """A resource the stack would make exists already and is not the stack's."""

    def __init__(self, rid: str, message: str) -> None:
        super().__init__(message)
        self.rid = rid


def _how(kind: str, field: str, old: Any, new: Any) -> str:
    if kind == "disk" and field == "size":
        from corral.domain.sizes import parse_size

        return "live" if parse_size("size", new) >= parse_size("size", old) else "replace"
    if field in LIVE_FIELDS.get(kind, ()):
        return "live"
    if kind == "vm" and field in RESTART_FIELDS:
        return "restart"
    return "replace"


def diff_fields(kind: str, old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """The fields that differ: ``{field, old, new, how}`` (how: live, restart, replace)."""
    out = []
    for field in sorted(old.keys() | new.keys()):
        if old.get(field) != new.get(field):
            out.append({"field": field, "old": old.get(field), "new": new.get(field),
                        "how": _how(kind, field, old.get(field), new.get(field))})
    return out


DOWN = ("defined", "stopped", "crashed")


def _down(res: Resource, existing: Existing) -> list[dict[str, Any]]:
    """A VM written to run that does not (stopped, crashed) is started again."""
    state = existing.vm_states.get(res.name)
    if res.kind == "vm" and res.spec.get("start") and state in DOWN:
        return [{"field": "state", "old": state, "new": "running", "how": "live"}]
    return []


def _change(res: Resource, action: str, line: int, fields: list[dict[str, Any]] | None = None,
            reason: str | None = None) -> dict[str, Any]:
    return {"id": res.id, "kind": res.kind, "name": res.name, "action": action, "line": line,
            "fields": fields or [], "reason": reason, "spec": res.spec,
            "deps": sorted(res.deps)}


def plan(desired: dict[str, Resource], recorded: dict[str, dict[str, Any]],
         existing: Existing, line_of: Any) -> list[dict[str, Any]]:
    """The changes, removals first (dependents before what they depend on), then the rest in
    dependency order.

    :raises Conflict: a resource the stack does not own already exists.
    """
    changes: dict[str, dict[str, Any]] = {}
    for rid, res in desired.items():
        line = line_of(res.path)
        rec = recorded.get(rid)
        there = existing.has(rid)
        if rec is None:
            if there:
                raise Conflict(rid, f"{res.kind} '{res.name}' exists already and is not "
                                    "part of this stack; remove it or rename it in the file")
            changes[rid] = _change(res, "create", line)
        elif not there:
            why = None if rec["state"] == "pending" else "it is gone from the daemon"
            changes[rid] = _change(res, "create", line, reason=why)
        else:
            fields = diff_fields(res.kind, rec["spec"], res.spec)
            if rec["state"] == "made":  # a pending VM is finished, which starts it
                fields += _down(res, existing)
            hows = {f["how"] for f in fields}
            action = ("replace" if "replace" in hows else "restart" if "restart" in hows
                      else "update" if fields else "keep")
            if rec["state"] == "pending" and action == "keep":
                action = "finish"
            changes[rid] = _change(res, action, line, fields)
    _cascade(desired, changes)
    removals = [{"id": rid, "kind": r["kind"], "name": r["name"], "action": "remove",
                 "line": None, "fields": [], "reason": None, "spec": r["spec"],
                 "deps": r.get("deps", [])}
                for rid, r in recorded.items() if rid not in desired]
    return reverse_order(removals) + list(changes.values())


def _cascade(desired: dict[str, Resource], changes: dict[str, dict[str, Any]]) -> None:
    """What depends on a replaced resource is made anew after it."""
    for rid, res in desired.items():  # dependency order: a cascade reaches its dependents
        if changes[rid]["action"] in ("create", "replace"):
            continue
        gone = sorted(d for d in res.deps if changes[d]["action"] == "replace")
        if gone:
            changes[rid]["action"] = "replace"
            changes[rid]["reason"] = f"{gone[0]} is replaced"


def reverse_order(removals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Removals with every resource before what it depends on."""
    out: list[dict[str, Any]] = []
    left = {r["id"]: r for r in removals}
    while left:
        needed = {d for r in left.values() for d in r["deps"]}
        ready = [r for rid, r in left.items() if rid not in needed] or list(left.values())
        for r in ready:
            out.append(r)
            del left[r["id"]]
    return out


def summary(changes: list[dict[str, Any]]) -> dict[str, int]:
    out = dict.fromkeys(ACTIONS, 0)
    for c in changes:
        out[c["action"]] += 1
    return out
