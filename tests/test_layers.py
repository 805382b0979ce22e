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


def imports_in(name: str, nodes) -> set[str]:
    """The package's modules that these nodes of module name's source
    import (a package's own modules are imported relatively)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[:len(package.split(".")) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            found |= {candidate for candidate in
                      (target, *(target + "." + alias.name for alias in node.names))
                      if candidate in MODULES}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tlsmgr"):
            raise AssertionError("%s: import tlsmgr's modules relatively" % name)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in MODULES}
    found.discard(name)
    return found


def imported_at_import(name: str) -> set[str]:
    """The package's modules that importing this one imports: its
    module-level imports, not those under ``if TYPE_CHECKING`` nor those
    inside functions."""
    at_import = []
    for statement in ast.parse(MODULES[name].read_text()).body:
        if isinstance(statement, ast.If) and "TYPE_CHECKING" in ast.unparse(statement.test):
            continue
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        at_import.extend(ast.walk(statement))
    return imports_in(name, at_import)


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


# The layers, bottom up (tlsmgr/__init__.py): a module imports modules of
# its own layer and of those before it, never of one after.  The package
# itself (its __version__) is below them all; config.py and daemon.py
# are with tlsmgr-ctl's admin/ at the top.
LAYERS = ("util", "wire", "observe", "stores", "service", "runtime", "top")


def layer(name: str) -> int:
    if name == "tlsmgr":
        return -1
    package = name.split(".")[1]
    return LAYERS.index(package if package in LAYERS else "top")


def imported_anywhere(name: str) -> set[str]:
    """The package's modules this one names in any import: at import,
    under TYPE_CHECKING, or inside a function."""
    return imports_in(name, ast.walk(ast.parse(MODULES[name].read_text())))


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_imports_one_of_a_later_layer(name):
    later = sorted(imported for imported in imported_anywhere(name)
                   if layer(imported) > layer(name))
    assert not later, "%s (%s) imports %s" % (name, LAYERS[layer(name)], later)


@pytest.mark.parametrize("package", [name for name in LAYERS if name != "top"] + ["stores"])
def test_each_layer_says_in_one_line_what_it_may_import(package):
    docstring = ast.get_docstring(ast.parse((PACKAGE / package / "__init__.py").read_text()))
    assert docstring is not None and "import" in docstring.splitlines()[0]


def test_the_graph_sees_imports():
    # The graph is read from the sources: were it empty, the tests above
    # could not fail.
    assert "tlsmgr.wire.requests" in GRAPH["tlsmgr.service.protocol"]
    assert "tlsmgr.stores" in GRAPH["tlsmgr.stores.lmdb"]
    assert "tlsmgr.service.scache" in imported_anywhere("tlsmgr.service.control")
    assert layer("tlsmgr.runtime.server") > layer("tlsmgr.service.scache") > layer("tlsmgr.util")
