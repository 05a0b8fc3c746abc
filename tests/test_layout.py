"""The house's walls, checked: the domain (ledger/) never imports the edges, the edge (ingest/)
writes no SQL, and no module imports itself back through others (no import cycle).

The import graph is read from the source with `ast` (every `import` and `from ... import`,
wherever it stands, so a deferred import inside a function counts too), over the project's own
packages.
"""

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ingest", "ledger", "simulators", "benchmarks", "cabinet")
SQL = re.compile(r"SELECT |UPDATE |INSERT INTO|DELETE FROM")


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """The project modules `name` imports (a `from package import module` names the module)."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            owner = _owner(target, modules)
            if owner and owner != name:
                yield owner


def _owner(target: str, modules: dict[str, Path]) -> str:
    """The longest project module `target` names (a module, or its package); "" for none."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: set(_imports(name, path, modules)) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _is_package_parent(module: str, imported: str) -> bool:
    # A module importing its own package's __init__ (for shared names) is not a cycle of design.
    return module.startswith(imported + ".")


def test_no_import_cycles() -> None:
    graph = {
        name: {t for t in targets if not _is_package_parent(name, t)}
        for name, targets in _graph().items()
    }
    assert _cycles(graph) == []


def test_the_domain_imports_no_edge() -> None:
    edges = ("ingest", "cabinet", "simulators", "benchmarks")
    offenders = {
        (name, target)
        for name, targets in _graph().items()
        if name.startswith("ledger")
        for target in targets
        if target.split(".")[0] in edges
    }
    assert offenders == set()


def test_the_edge_writes_no_sql() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in (ROOT / "ingest").rglob("*.py")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if SQL.search(line)
    ]
    assert offenders == []


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
