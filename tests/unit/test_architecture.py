"""Where code may live, checked over the source of ``src/corral`` (see ``_source.py``).

* **Layers.** A component (``corral.<name>``) imports only from its own tier's non-independent
  neighbours and from tiers below it; the CLI and the Client talk HTTP and never import the
  service or the API; the scheduler imports nothing but domain and errors.
* **No import cycles**, counting every import (at import time, inside functions and under
  ``TYPE_CHECKING``). A back-edge that closes a cycle is allowed only when listed below with
  why it exists.
* **QMP and the guest agent are the engine's**: nothing outside ``src/corral/engine/`` sends a
  QMP or guest-agent command.

The allow-lists below name today's offenders while the service is being reshaped (issue 9:
the engine driver, the VM runtime). Each entry must still offend: a fixed one fails the test
until it is removed, so the lists only shrink.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.unit._source import PACKAGE, component, import_statements, imports, modules, rel, tree

# top to bottom; in an independent tier no component imports another of the same tier
TIERS: list[tuple[str, frozenset[str], bool]] = [
    # the package root re-exports Client; the daemon is what `corral serve` runs
    ("front doors", frozenset({"corral", "api", "cli", "client", "client_networks",
                               "client_access", "client_files", "client_pools",
                               "client_stacks", "client_events", "client_migrate", "wire",
                               "wire_checks", "wire_json",
                               "remote",
                               "daemon"}), False),
    ("use cases", frozenset({"service", "perf"}), True),
    ("mechanisms", frozenset({"engine", "store", "scheduler", "images"}), True),
    # every host command goes through host.runner, so host sits under all its users
    ("host", frozenset({"host"}), True),
    # where things live, placed by the settings (home, socket, image path)
    ("paths", frozenset({"config"}), True),
    # every setting declared once (parsers from the domain); read by whoever needs one
    ("settings", frozenset({"settings"}), True),
    ("domain", frozenset({"domain"}), True),
    # views: the typed shapes of answers, stdlib only, shared by the API and the Client
    # the configuration file's reader (TOML, stdlib only) sits under the settings it fills
    ("foundations", frozenset({"errors", "views", "settings_file", "settings_parse"}), True),
]
TIER = {name: i for i, (_, names, _) in enumerate(TIERS) for name in names}
INDEPENDENT = {name for _, names, independent in TIERS if independent for name in names}

# imports the tiers would allow and the design does not
FORBIDDEN = {
    ("cli", "service"), ("cli", "api"),  # the CLI talks HTTP to the daemon
    ("client", "service"), ("client", "api"), ("client", "cli"), ("client", "daemon"),
    *((part, other) for part in ("wire", "client_networks", "client_access", "client_pools",
                                 "client_stacks", "client_events", "client_files",
                                 "client_migrate", "wire_checks", "wire_json", "remote")
      for other in ("service", "api", "cli", "daemon")),
}
ONLY = {"scheduler": {"domain", "errors"}}  # pure: the simulator runs it outside the daemon

# (importer, imported) → why this import may close a cycle. Each must still close one.
ALLOWED_BACK_EDGES: dict[tuple[str, str], str] = {}

ENGINE = PACKAGE / "engine"
# every QMP command Corral sends today (src/corral/engine/qemu and the service)
QMP_COMMANDS = frozenset({
    "block_resize", "block_set_io_throttle", "blockdev-add", "blockdev-del", "cont",
    "device_add", "device_del", "getfd", "job-dismiss", "migrate", "migrate-incoming",
    "migrate-set-capabilities", "migrate-set-parameters", "netdev_add", "netdev_del",
    "qmp_capabilities", "query-blockstats", "query-cpus-fast", "query-jobs", "query-migrate",
    "query-status", "quit", "snapshot-delete", "snapshot-load", "snapshot-save", "stop",
    "system_powerdown", "system_reset",
})
# "guest-…" words of QEMU that are run states or shutdown reasons, not agent commands
NOT_AGENT_COMMANDS = frozenset({"guest-panic", "guest-panicked", "guest-reset"})
SENDERS = frozenset({"monitor", "agent", "qmp", "qga"})  # what holds a QMP/QGA connection

# files outside the engine that send QMP/QGA commands today (the engine driver moves them)
KNOWN_QMP_OUTSIDE_ENGINE: set[str] = set()  # the engine driver owns every command


# --- layers -------------------------------------------------------------------------------

def test_every_component_has_a_tier() -> None:
    assert {component(m) for m in modules()} - set(TIER) == set()


def test_imports_are_sorted_by_when_they_run() -> None:
    code = ("import corral.a\nif TYPE_CHECKING:\n    import corral.b\nelse:\n    import corral.g\n"
            "def f():\n    import corral.c\nclass K:\n    import corral.d\n"
            "try:\n    import corral.e\nexcept ImportError:\n    import corral.f\n")
    found = [(node.names[0].name, kind)
             for node, kind in import_statements(ast.parse(code).body, "module")]
    assert found == [("corral.a", "module"), ("corral.b", "typing"), ("corral.g", "module"),
                     ("corral.c", "deferred"), ("corral.d", "module"), ("corral.e", "module"),
                     ("corral.f", "module")]
    assert {(i.target, i.kind) for i in imports("corral.wire")} >= {
        ("corral.errors", "module"), ("corral.remote", "deferred")}


def _layer_error(importer: str, imported: str) -> str | None:
    a, b = component(importer), component(imported)
    if a == b:
        return None
    if (a, b) in FORBIDDEN:
        return "forbidden"
    if a in ONLY and b not in ONLY[a]:
        return f"{a} imports only {sorted(ONLY[a])}"
    if TIER[b] < TIER[a]:
        return f"upward: {TIERS[TIER[a]][0]} → {TIERS[TIER[b]][0]}"
    if TIER[b] == TIER[a] and a in INDEPENDENT:
        return f"{a} and {b} are independent"
    return None


def test_imports_follow_the_layers() -> None:
    errors = [f"{rel(modules()[m])}:{i.line} imports {i.target} ({i.kind}): {why}"
              for m in modules() for i in imports(m)
              if (why := _layer_error(m, i.target)) is not None]
    assert errors == []


def test_layer_rules_catch_what_they_should() -> None:
    assert _layer_error("corral.cli.main", "corral.service.manager") == "forbidden"
    assert _layer_error("corral.client", "corral.api.app") == "forbidden"
    assert _layer_error("corral.scheduler.queue", "corral.host.runner") is not None
    assert _layer_error("corral.engine.qemu.qmp", "corral.service.manager") is not None
    assert _layer_error("corral.store.db", "corral.engine.qemu.argv") is not None
    assert _layer_error("corral.service.disks", "corral.host.qemu_img") is None


def _reach(start: str, kinds: frozenset[str], skip: frozenset[str] = frozenset()) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for i in imports(todo.pop()):
            if i.kind in kinds and i.target not in seen and i.target not in skip:
                seen.add(i.target)
                todo.append(i.target)
    return seen


def test_cli_and_client_never_reach_the_service() -> None:
    """Not even through another module: only ``corral serve`` (``corral.daemon``) may."""
    run = frozenset({"module", "deferred"})
    for m in modules():
        if component(m) in ("cli", "client"):
            reached = {component(t) for t in _reach(m, run, skip=frozenset({"corral.daemon"}))}
            assert reached.isdisjoint({"service", "api"}), m


# --- cycles -------------------------------------------------------------------------------

def _graph(skip: set[tuple[str, str]]) -> dict[str, set[str]]:
    return {m: {i.target for i in imports(m) if (m, i.target) not in skip} for m in modules()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while (top := stack.pop()) != node:
                        comp.append(top)
                    if comp:
                        out.append(sorted([*comp, node]))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in stack:
                low[node] = min(low[node], index[child])
    return out


def test_no_import_cycles() -> None:
    assert _cycles(_graph(set(ALLOWED_BACK_EDGES))) == []


def test_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_allowed_back_edges_still_close_a_cycle() -> None:
    everything = frozenset({"module", "deferred", "typing"})
    stale = []
    for (importer, imported), kind in ALLOWED_BACK_EDGES.items():
        kinds = {i.kind for i in imports(importer) if i.target == imported}
        if kinds != {kind} or importer not in _reach(imported, everything):
            stale.append(f"{importer} → {imported}: listed as {kind}, now {sorted(kinds)}")
    assert stale == []


# --- QMP and the guest agent --------------------------------------------------------------

def _is_command(value: object) -> bool:
    return isinstance(value, str) and (
        value in QMP_COMMANDS
        or (value.startswith("guest-") and value not in NOT_AGENT_COMMANDS))


def _receiver(func: ast.Attribute) -> str | None:
    node = func.value
    if isinstance(node, ast.Call):
        node = node.func
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", None)


def qmp_sends(source: ast.Module) -> list[int]:
    """Lines that send a QMP/QGA command: ``.execute``/``.command`` of a command name or of
    anything on a monitor/agent, or a command name that stands out as one (``"guest-…"``,
    ``"device_add"``: not words of English) wherever it is written."""
    lines = set()
    for node in ast.walk(source):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("execute", "command") and node.args:
            literal = any(_is_command(getattr(n, "value", None)) for n in ast.walk(node.args[0]))
            if literal or _receiver(node.func) in SENDERS:
                lines.add(node.lineno)
        elif isinstance(node, ast.Constant) and _is_command(node.value) \
                and any(c in "-_" for c in str(node.value)):
            lines.add(node.lineno)
    return sorted(lines)


def _outside_engine() -> dict[str, list[int]]:
    found = {}
    for path in modules().values():
        if not path.is_relative_to(ENGINE) and (lines := qmp_sends(tree(path))):
            found[rel(path)] = lines
    return found


def test_only_the_engine_sends_qmp_or_agent_commands() -> None:
    new = {f: lines for f, lines in _outside_engine().items()
           if f not in KNOWN_QMP_OUTSIDE_ENGINE}
    assert new == {}, "send it through the engine driver"


def test_known_qmp_senders_are_not_stale() -> None:
    assert KNOWN_QMP_OUTSIDE_ENGINE - set(_outside_engine()) == set()


def test_qmp_detector() -> None:
    def lines(code: str) -> list[int]:
        return qmp_sends(ast.parse(code))

    assert lines('await rt.monitor.execute("cont" if x else "stop")') == [1]
    assert lines("await self._runtime(rec).monitor.execute(command)") == [1]
    assert lines('await agent.execute("guest-exec", {"path": "sh"})') == [1]
    assert lines('await _job(monitor, "snapshot-save", {})') == [1]
    assert lines('x = "guest-file-open"') == [1]
    assert lines('conn.execute(select(vms))\ncheck(name, "stop", state)') == []
    assert lines('if status in ("guest-panicked", "io-error"): pass') == []
    assert lines('from corral.engine import x\nawait driver.pause(vm)') == []


def test_the_engine_itself_is_seen_sending() -> None:
    assert qmp_sends(tree(ENGINE / "qemu" / "qmp.py")) != []


def test_rel_names_files_as_the_allow_lists_do() -> None:
    assert rel(PACKAGE / "service" / "disks.py") == "src/corral/service/disks.py"
    assert Path(rel(PACKAGE)).parts[:2] == ("src", "corral")
