"""``corral apply``, ``corral plan`` and ``corral stack list|show|rm|schema``: declarative
stacks, planned and applied by the daemon."""

from __future__ import annotations

import argparse
import json
import sys

from corral import errors
from corral.cli.common import Parents, client, command, out
from corral.cli.formatter import Formatter

TYPE_CHECKING = False  # typing is slow to import; the CLI must start in milliseconds
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any

SIGNS = {"create": "+", "finish": "…", "update": "~", "restart": "~", "replace": "-/+",
         "remove": "-", "keep": "="}
HOW = {"live": "in place", "restart": "needs restart", "replace": "forces replacement"}
APPLY_DESC = """\
Create or update the resources a stack file describes (networks, routers with their
forwards, firewall rules, disks, VMs, snapshots), in dependency order and in parallel where
independent. The plan is printed first; a second apply of an unchanged file changes nothing.
A failure stops the apply and says which resource failed and why; what was made is recorded
and the next apply continues from there. See 'corral stack schema' for the file's fields."""


def _read(path: str) -> tuple[str, str]:
    if path == "-":
        return sys.stdin.read(), "stdin.yaml"
    try:
        with open(path) as f:
            return f.read(), path
    except OSError as err:
        raise errors.InvalidSpec("file", f"cannot read {path}: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise errors.InvalidSpec("file", f"{path} is not UTF-8 text") from err


def _value(v: Any) -> str:
    if isinstance(v, list | dict):
        return json.dumps(v)
    return "-" if v is None else str(v)


def render_plan(plan: Mapping[str, Any]) -> str:
    changes = [c for c in plan["changes"] if c["action"] != "keep"]
    s = plan["summary"]
    if not changes:
        return f"stack {plan['stack']}: no changes ({s['keep']} resources up to date)"
    lines = [f"stack {plan['stack']} ({plan['file']}): {s['create'] + s['finish']} to create, "
             f"{s['update'] + s['restart']} to change, {s['replace']} to replace, "
             f"{s['remove']} to remove, {s['keep']} unchanged"]
    for c in changes:
        what = c["action"] + (f", {c['reason']}" if c.get("reason") else "")
        at = f"  (line {c['line']})" if c.get("line") else ""
        lines.append(f"  {SIGNS[c['action']]:>3} {c['id']}: {what}{at}")
        for f in c["fields"]:
            lines.append(f"        {f['field']}: {_value(f['old'])} → {_value(f['new'])}"
                         f" ({HOW[f['how']]})")
    return "\n".join(lines)


def follow(args: argparse.Namespace, events: Iterable[Mapping[str, Any]]) -> int:
    """Print the events of an apply or a removal as they come; the exit status of how it
    ended."""
    if args.json:
        for event in events:
            print(json.dumps(event), flush=True)
            if event["event"] == "end":
                return 0 if event["ok"] else errors.from_dict(dict(event["error"])).exit_code
        return 1
    total = done = 0
    for event in events:
        kind = event["event"]
        if kind == "plan":
            print(render_plan(event["plan"]), flush=True)
            total = sum(1 for c in event["plan"]["changes"] if c["action"] != "keep")
        elif kind == "done":
            done += 1
            print(f"[{done}/{total}] {event['id']}: {event['action']} done "
                  f"({event['seconds']:.1f} s)", flush=True)
        elif kind == "begin":
            print(f"        {event['id']}: {event['action']} …", flush=True)
        elif kind == "skipped":
            print(f"        {event['id']}: skipped", flush=True)
        elif kind == "end":
            return _end(event)
    return 1


def _end(event: Mapping[str, Any]) -> int:
    if event["ok"]:
        print(f"stack {event['stack']}: done")
        return 0
    err = errors.from_dict(dict(event["error"]))
    print(f"corral: error: {err.message} (what was made is recorded; fix the cause and "
          "apply again)", file=sys.stderr)
    return err.exit_code


def cmd_apply(args: argparse.Namespace) -> int:
    text, file = _read(args.file)
    c = client(args, timeout=None)
    return follow(args, c.stack_apply(text, file, args.name, dry_run=args.dry_run))


def cmd_plan(args: argparse.Namespace) -> int:
    text, file = _read(args.file)
    plan = client(args).stack_plan(text, file, args.name)
    return out(args, plan, render_plan(plan))


def stack_table(stacks: Iterable[Mapping[str, Any]]) -> str:
    rows = [("NAME", "STATUS", "RESOURCES", "FILE")]
    rows += [(s["name"], s["status"], " ".join(f"{n} {k}" for k, n in
                                               sorted(s["counts"].items())) or "-", s["file"])
             for s in stacks]
    if len(rows) == 1:
        return "no stacks; make one with 'corral apply -f FILE'"
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def cmd_list(args: argparse.Namespace) -> int:
    stacks = client(args).stack_list()
    return out(args, stacks, stack_table(stacks))


def cmd_show(args: argparse.Namespace) -> int:
    s = client(args).stack_show(args.name)
    lines = [stack_table([s])]
    if s.get("error"):
        lines.append(f"last error: {s['error']}")
    lines += [f"  {r['id']}  ({r['state']})" for r in s.get("resources", [])]
    return out(args, s, "\n".join(lines))


def cmd_rm(args: argparse.Namespace) -> int:
    return follow(args, client(args, timeout=None).stack_rm(args.name))


def cmd_schema(args: argparse.Namespace) -> int:
    from corral.domain.stackfile import schema

    print(json.dumps(schema(), indent=2))
    return 0


def _file_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--file", required=True, metavar="FILE",
                   help="the stack file (YAML; '-' reads standard input)")
    p.add_argument("--name", metavar="NAME",
                   help="the stack's name (default: name: in the file, else the file's name)")


def register(sub: Any, pa: Parents) -> None:
    """Add ``apply``, ``plan`` and ``stack``."""
    p = command(sub, pa, "apply", cmd_apply, "create or update the resources of a stack file",
                APPLY_DESC, vm=False)
    _file_args(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p = command(sub, pa, "plan", cmd_plan, "what 'corral apply' would create, change (field "
                "by field, old → new) and remove, and which changes need a restart", vm=False)
    _file_args(p)
    sp = sub.add_parser("stack", help="stacks applied from files", formatter_class=Formatter)
    ssub = sp.add_subparsers(dest="stack_command", metavar="COMMAND", required=True)
    command(ssub, pa, "list", cmd_list, "the stacks and how many resources each owns",
            vm=False)
    p = command(ssub, pa, "show", cmd_show, "a stack and each of its resources", vm=False)
    p.add_argument("name", metavar="NAME")
    p = command(ssub, pa, "rm", cmd_rm, "remove every resource of a stack (dependents "
                "first), then the stack", vm=False)
    p.add_argument("name", metavar="NAME")
    command(ssub, pa, "schema", cmd_schema, "the JSON Schema of a stack file", js=False,
            vm=False)
