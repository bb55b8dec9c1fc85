"""The package's layout: no import circle, even one hidden inside a function, and every
module imports alone (in a fresh interpreter), so that no module works only because another
happened to be imported first."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

from regimes.extras import EXTRAS

PACKAGE = Path(importlib.util.find_spec("regimes").origin).parent


def module_names() -> dict[str, Path]:
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _runtime_nodes(tree: ast.AST):
    """Every node, less the bodies of `if TYPE_CHECKING:` (imports for annotations only)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            continue
        yield node
        yield from _runtime_nodes(node)


def imports_of(name: str, path: Path, modules: dict) -> set[str]:
    """The package's modules that `name` imports, at its top or inside any function."""
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
            submodules = {f"{node.module}.{a.name}" for a in node.names} & set(modules)
            found |= submodules
            if len(submodules) < len(node.names):  # names from the module itself
                found.add(node.module)
    return found - {name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                on_stack.discard(w)
                component.append(w)
            on_stack.discard(v)
            if component:
                found.append(sorted([v, *component]))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_itself_back_through_others():
    modules = module_names()
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_circle_hidden_in_a_function():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    tree = ast.parse("def f():\n    from regimes.run import Run\n")
    path = PACKAGE / "_probe_of_the_test.py"
    try:
        path.write_text(ast.unparse(tree))
        assert imports_of("regimes._probe_of_the_test", path, {**module_names(), "regimes.run": None}) == {
            "regimes.run"
        }
    finally:
        path.unlink()


ALONE = """
import importlib, sys
path, package, optional, names = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4:]
if path:
    sys.path.insert(0, path)
for name in names:
    for loaded in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in optional:
            print(name, "|", repr(error))
    except Exception as error:
        if type(error).__name__ != "MissingExtraError":
            print(name, "|", repr(error))
"""


def import_each_alone(names, package: str = "regimes", path: str = "") -> str:
    """Import each module with no other module of `package` loaded before it (third-party
    packages stay loaded); what failed, one line each."""
    optional = ",".join(sorted(set(EXTRAS) | {"wandb"}))
    done = subprocess.run(
        [sys.executable, "-c", ALONE, path, package, optional, *names], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_module_imports_alone():
    assert import_each_alone([n for n in module_names() if n != "regimes.__main__"]) == ""


def test_the_import_check_catches_a_module_that_needs_another_imported_first(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("import pkg\nVALUE = pkg.b.VALUE\n")  # works only once pkg.b is imported
    (package / "b.py").write_text("VALUE = 1\n")
    failed = import_each_alone(["pkg.b", "pkg.a"], "pkg", str(tmp_path))
    assert failed.startswith("pkg.a | AttributeError")
