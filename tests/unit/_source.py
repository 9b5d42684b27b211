"""The source of ``src/corral`` read as data for the architecture tests: each module's parsed
tree, and its imports of other Corral modules, each marked by when it runs.

An import is one of three kinds:

* ``module``: runs when the module is imported (top level, also inside ``try``/``if``);
* ``deferred``: inside a function, so it runs when that function is first called;
* ``typing``: under ``if TYPE_CHECKING:``, never run; only the type checker follows it.

``from corral.x import y`` counts as an import of ``corral.x.y`` when that is a module, else of
``corral.x``. Importing ``corral.x.y`` also runs ``corral/x/__init__.py``: that package is
counted too, unless the importer is inside it (Python has imported it by then anyway).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
PACKAGE = SRC / "corral"


@dataclass(frozen=True)
class Import:
    target: str  # a module of src/corral, dotted
    kind: str  # "module", "deferred" or "typing"
    line: int


def rel(path: Path) -> str:
    """A path as the repository names it (``src/corral/...``)."""
    return path.relative_to(REPO).as_posix()


@cache
def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name (a package by its ``__init__``)."""
    found: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


@cache
def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_statements(body: list[ast.stmt], kind: str
                ) -> list[tuple[ast.Import | ast.ImportFrom, str]]:
    """The import statements under ``body`` with their kind; a function body is deferred."""
    out: list[tuple[ast.Import | ast.ImportFrom, str]] = []
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            out.append((node, kind))
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            out += import_statements(node.body, "typing") + import_statements(node.orelse, kind)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            out += import_statements(node.body, "typing" if kind == "typing" else "deferred")
        else:
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                for child in getattr(node, field, ()):
                    if isinstance(child, ast.stmt):
                        out += import_statements([child], kind)
                    elif hasattr(child, "body"):  # except handlers, match cases
                        out += import_statements(child.body, kind)
    return out


def _resolve(importer: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    known = modules()
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the importer's package
            package = importer.split(".")
            if known[importer].name != "__init__.py":
                package = package[:-1]
            package = package[:len(package) - node.level + 1]
            base = ".".join([*package, base] if base else package)
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                 for a in node.names]
    targets: set[str] = set()
    for name in names:
        if name != "corral" and not name.startswith("corral."):
            continue
        while name not in known:  # an attribute path, e.g. "import corral.x.y as z"
            name = name.rpartition(".")[0]
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            inside = importer == prefix or importer.startswith(prefix + ".")
            if prefix != importer and (i == len(parts) or not inside):
                targets.add(prefix)
    return sorted(targets)


@cache
def imports(module: str) -> tuple[Import, ...]:
    """``module``'s imports of other modules of the package."""
    out = [Import(target, kind, node.lineno)
           for node, kind in import_statements(tree(modules()[module]).body, "module")
           for target in _resolve(module, node)]
    return tuple(out)


def component(module: str) -> str:
    """The layer unit a module belongs to: ``corral.service.disks`` → ``service``;
    ``corral.errors`` → ``errors``; the package's own ``__init__`` → ``corral``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "corral"
