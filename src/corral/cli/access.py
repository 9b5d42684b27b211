"""``corral token create|list|revoke``, ``corral project create|list|show|set|rm``,
``corral events`` and ``corral whoami``: who may do what, in which project, and what was
done."""

from __future__ import annotations

import argparse
import time

from corral.cli.common import Parents, client, command, out
from corral.cli.formatter import Formatter

TYPE_CHECKING = False  # typing is slow to import; the CLI must start in milliseconds
if TYPE_CHECKING:
    from typing import Any


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "never"


def cmd_token_create(args: argparse.Namespace) -> int:
    tok = client(args).token_create(args.token, args.role, args.project or "default",
                                    args.expires)
    return out(args, tok, f"{tok['secret']}\n(token '{tok['name']}': {tok['role']} in project "
                          f"'{tok['project']}', expires {_when(tok['expires_at'])}; the secret "
                          "is shown this once)")


def cmd_token_list(args: argparse.Namespace) -> int:
    toks = client(args).token_list()
    rows = [f"{'NAME':<20} {'ROLE':<9} {'PROJECT':<16} {'CREATED':<17} EXPIRES"] + [
        f"{t['name']:<20} {t['role']:<9} {t['project']:<16} {_when(t['created_at']):<17} "
        f"{_when(t['expires_at'])}" for t in toks]
    return out(args, toks, "\n".join(rows))


def cmd_token_revoke(args: argparse.Namespace) -> int:
    client(args).token_revoke(args.token)
    return out(args, {"revoked": args.token}, f"token {args.token} revoked")


def _quotas(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in ("max_vms", "max_cpus", "max_memory", "max_disk")
            if getattr(args, k) is not None}


def _project_text(p: Any) -> str:
    q, u = p["quotas"], p["usage"]

    def cell(used: int, limit: int | None, size: bool = False) -> str:
        shown = (lambda n: f"{n / (1 << 30):.1f}G") if size else str
        return f"{shown(used)}/{shown(limit) if limit is not None else '-'}"

    return (f"{p['name']:<16} vms {cell(u['vms'], q['max_vms']):<8} cpus "
            f"{cell(u['cpus'], q['max_cpus']):<8} memory "
            f"{cell(u['memory'], q['max_memory'], True):<14} disk "
            f"{cell(u['disk'], q['max_disk'], True)}")


def cmd_project_create(args: argparse.Namespace) -> int:
    p = client(args).project_create(args.name, **_quotas(args))
    return out(args, p, _project_text(p))


def cmd_project_set(args: argparse.Namespace) -> int:
    p = client(args).project_set(args.name, **_quotas(args))
    return out(args, p, _project_text(p))


def cmd_project_list(args: argparse.Namespace) -> int:
    ps = client(args).project_list()
    return out(args, ps, "\n".join(_project_text(p) for p in ps))


def cmd_project_show(args: argparse.Namespace) -> int:
    p = client(args).project_show(args.name)
    return out(args, p, _project_text(p))


def cmd_project_rm(args: argparse.Namespace) -> int:
    client(args).project_rm(args.name)
    return out(args, {"deleted": args.name}, f"project {args.name} removed")


def cmd_whoami(args: argparse.Namespace) -> int:
    me = client(args).whoami()
    where = me["project"] or me["selected"] or "every project"
    return out(args, me, f"{me['name']}: {me['role']} in {where}")


def register(sub: Any, pa: Parents) -> None:
    """Add ``token``, ``project`` and ``whoami`` (``events``: :mod:`.events`)."""
    tp = sub.add_parser("token", help="API tokens for remote access (admin)",
                        formatter_class=Formatter, description="Tokens let a client reach "
                        "the daemon over TLS ('corral serve --listen'). A viewer reads, an "
                        "operator acts in its project, an admin does everything. Only a hash "
                        "of the secret is kept: it is shown once.")
    tsub = tp.add_subparsers(dest="token_command", metavar="COMMAND", required=True)
    p = command(tsub, pa, "create", cmd_token_create, "make a token and print its secret once",
                vm=False)
    p.add_argument("token", metavar="NAME", help="the token's name")
    p.add_argument("--role", required=True, choices=("admin", "operator", "viewer"))
    p.add_argument("--expires", metavar="AGE", help="lifetime, e.g. 12h, 30d, 2w (default: "
                                                    "never); --project: its project")
    command(tsub, pa, "list", cmd_token_list, "list tokens (never their secrets)", vm=False)
    p = command(tsub, pa, "revoke", cmd_token_revoke, "revoke a token: its next request is "
                "refused", vm=False, aliases=("rm",))
    p.add_argument("token", metavar="NAME")
    pp = sub.add_parser("project", help="projects and their quotas",
                        formatter_class=Formatter, description="Every VM, disk, network and "
                        "router belongs to a project ('default' unless --project says). A "
                        "token sees only its project's objects.")
    psub = pp.add_subparsers(dest="project_command", metavar="COMMAND", required=True)
    for verb, func, help_ in (("create", cmd_project_create, "make a project with quotas"),
                              ("set", cmd_project_set, "change a project's quotas")):
        p = command(psub, pa, verb, func, help_, vm=False)
        p.add_argument("name", metavar="NAME")
        p.add_argument("--max-vms", type=int, metavar="N")
        p.add_argument("--max-cpus", type=int, metavar="N", help="vCPUs of all its VMs")
        p.add_argument("--max-memory", metavar="SIZE", help="guest memory, e.g. 16G")
        p.add_argument("--max-disk", metavar="SIZE", help="virtual disk, e.g. 100G")
    command(psub, pa, "list", cmd_project_list, "projects, usage/quota", vm=False)
    for verb, func, help_, aliases in (
            ("show", cmd_project_show, "one project, usage/quota", ()),
            ("rm", cmd_project_rm, "remove an empty project", ("delete",))):
        command(psub, pa, verb, func, help_, vm=False, aliases=aliases).add_argument(
            "name", metavar="NAME")
    command(sub, pa, "whoami", cmd_whoami, "who the daemon takes you for", vm=False)
