"""The package's layers: no module imports, when it is imported, one that
imports it back (type-only imports aside), and none of the lower layers
reaches up into observability."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "tlsmgr"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported_at_import(name: str) -> set[str]:
    """The package's modules that importing this one imports: its
    module-level imports, not those under ``if TYPE_CHECKING`` nor those
    inside functions."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for statement in ast.parse(path.read_text()).body:
        if isinstance(statement, ast.If) and "TYPE_CHECKING" in ast.unparse(statement.test):
            continue
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for node in ast.walk(statement):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                found |= {candidate for candidate in
                          (target, *(target + "." + alias.name for alias in node.names))
                          if candidate in MODULES}
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names if alias.name in MODULES}
    found.discard(name)
    return found


GRAPH = {name: imported_at_import(name) for name in MODULES}


def cycle_from(start: str) -> list[str] | None:
    """A chain of imports from start back to it, if there is one."""
    seen: set[str] = set()
    stack = [(start, [start])]
    while stack:
        name, chain = stack.pop()
        for imported in GRAPH[name]:
            if imported == start:
                return chain + [start]
            if imported not in seen:
                seen.add(imported)
                stack.append((imported, chain + [imported]))
    return None


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_imported_back_by_what_it_imports(name):
    assert cycle_from(name) is None, " -> ".join(cycle_from(name) or [])


def test_the_stores_and_the_request_table_know_nothing_above_them():
    # The stores serve the session cache; the request table is the wire's.
    # Neither counts into the daemon's stats nor knows its handlers.
    above = {"tlsmgr.stats", "tlsmgr.metrics", "tlsmgr.control", "tlsmgr.protocol",
             "tlsmgr.server", "tlsmgr.connection", "tlsmgr.daemon", "tlsmgr.scache"}
    for name in MODULES:
        if name.startswith("tlsmgr.stores") or name == "tlsmgr.requests":
            assert not GRAPH[name] & above, (name, sorted(GRAPH[name] & above))


def test_the_graph_sees_imports():
    # The graph is read from the sources: were it empty, the tests above
    # could not fail.
    assert "tlsmgr.requests" in GRAPH["tlsmgr.protocol"]
    assert "tlsmgr.stores" in GRAPH["tlsmgr.stores.lmdb"]
