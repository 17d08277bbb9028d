"""The package layout shows the architecture: layers import only downward, nothing circles, and a
stage kind becomes code in one place.

Every module under llmops/ is parsed with `ast`, and every import statement counts: at module
level, inside functions, and under `if TYPE_CHECKING:` (a type-only import still ties the two
modules together). Each import is mapped to the llmops module it loads and that module's unit (the
package or top-level module of llmops) to its layer, in the order DESIGN.md draws. No unit or
package is exempt. This is the check of `../shared/tools/layers.py`, kept inside the repository.
"""

from __future__ import annotations

import ast
import functools
import graphlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "llmops"

# Lowest first. A unit (a package or top-level module of llmops) may import its own layer or a
# lower one, never a higher one (TYPE_CHECKING imports included).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("llmops", "core", "errors", "env", "files", "conf"),
    ("data", "scoring", "planning"),
    ("config",),
    ("compiler",),
    ("store", "tracking", "serving"),
    ("backends",),
    ("stages",),
    ("runner",),
    ("monitor", "report"),
    ("cli", "compare", "gguf_setup", "__main__"),
)
LAYER = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
# The loose modules the top level of llmops/ may hold: the package itself, the foundation modules
# every layer may import, and the commands (`python -m llmops.X`); all else lives in a package.
TOP_LEVEL_MODULES = {"__init__", "__main__", "errors", "env", "files", "compare", "gguf_setup"}
# Calls that import a module named by a string, which no reader (or this test) can follow.
DISPATCH_CALLS = {"import_module", "__import__"}
# Where a stage kind becomes its module, through core's stage table: the one such call allowed.
DISPATCH_HOME = "llmops.runner.dispatch"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def _imports(path: Path) -> list[tuple[int, str]]:
    """Returns (line, imported name) for each llmops import in path, wherever it stands (parsed
    once per session: every check reads the same modules)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return _imports_in(path.read_text(encoding="utf-8"), package)


def _imports_in(source: str, package: str) -> list[tuple[int, str]]:
    """Returns (line, name) for each llmops import in source, a module of package: every import
    statement, inside functions and under `if TYPE_CHECKING:` included."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from a.b import c` may import the module a.b.c: keep the name, trim it later.
            found += [(node.lineno, base)] + [(node.lineno, f"{base}.{a.name}") for a in node.names]
    found.sort()
    return [(line, mod) for line, mod in found if mod == "llmops" or mod.startswith("llmops.")]


def _dispatches_in(source: str) -> list[int]:
    """Returns the lines of source that call importlib.import_module or __import__."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name in DISPATCH_CALLS:
                lines.append(node.lineno)
    return sorted(lines)


def _modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


PATHS = {_module_name(p): p for p in _modules()}
MODULES = set(PATHS)
PACKAGES = {m for m, p in PATHS.items() if p.name == "__init__.py"}
UNITS = {m.split(".")[1] for m in MODULES if m != "llmops"} | {"conf"}


def _unit(module: str) -> str:
    """Returns the unit a module lands in ("llmops" for the package's own __init__)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in UNITS else "llmops"


def _module(name: str) -> str:
    """Trims an imported name to the llmops module it loads (`llmops.a.b.func` -> `llmops.a.b`)."""
    while name not in MODULES and "." in name:
        name = name.rpartition(".")[0]
    return name


@functools.cache
def _edges() -> dict[str, dict[str, int]]:
    """Returns, for each module, the llmops modules it imports (with the first line of each).

    An import of a package (its __init__) is left out of the module graph, as layers.py leaves
    it: it names the package's public face, and the package's own modules are the edges that
    matter. The layer check still sees it (see `test_no_import_climbs_a_layer`).
    """
    edges: dict[str, dict[str, int]] = {}
    for module, path in PATHS.items():
        edges[module] = {}
        for line, name in _imports(path):
            target = _module(name)
            if target != module and target in MODULES and target not in PACKAGES:
                edges[module].setdefault(target, line)
    return edges


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Returns the strongly connected components of graph with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10000))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(found)


def test_every_unit_has_a_layer():
    assert sorted(UNITS - set(LAYER)) == []


def test_no_import_climbs_a_layer():
    """Every import, of a module or of a package, lands in the importer's layer or a lower one."""
    climbing = []
    for module, path in PATHS.items():
        src = _unit(module)
        for line, name in _imports(path):
            target = _module(name)
            dst = _unit(target)
            if LAYER.get(dst, len(LAYERS)) > LAYER.get(src, -1):
                climbing.append(f"{path.relative_to(ROOT.parent)}:{line} ({src}, layer "
                                f"{LAYER.get(src)}) imports {target} ({dst}, layer "
                                f"{LAYER.get(dst)})")
    assert sorted(set(climbing)) == []


def test_no_import_cycle_between_units():
    graph: dict[str, set[str]] = {}
    for module, path in PATHS.items():
        src = _unit(module)
        graph.setdefault(src, set()).update(
            dst for dst in (_unit(_module(n)) for _, n in _imports(path)) if dst != src)
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle between units: {' -> '.join(exc.args[1])}")


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_no_import_circle_among_the_modules_of(unit):
    """No module of the unit reaches itself again through imports (layers.py's `circles`)."""
    edges = _edges()
    graph = {m: set(targets) for m, targets in edges.items()}
    mine = [c for c in _circles(graph) if _unit(c[0]) == unit]
    assert [" <-> ".join(c) for c in mine] == []


def test_no_import_circle_at_all():
    """The whole module graph has no circle (one that spans units is also a unit cycle)."""
    edges = _edges()
    assert [" <-> ".join(c) for c in _circles({m: set(t) for m, t in edges.items()})] == []


def test_a_stage_kind_becomes_code_in_one_place():
    """String dispatch (importlib.import_module, __import__) happens at most once: in the
    runner's dispatch, through core's stage table. A backend or a launched rank is reached by
    an explicit import, never by a name turned into a module."""
    calls = [f"{_module_name(p)}:{line}" for p in _modules()
             for line in _dispatches_in(p.read_text(encoding="utf-8"))]
    assert len(calls) <= 1, calls
    assert all(c.startswith(DISPATCH_HOME + ":") for c in calls), calls


def test_top_level_holds_only_foundation_modules_commands_and_packages():
    loose = {p.stem for p in ROOT.glob("*.py")}
    folders = {p.name for p in ROOT.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert sorted(loose - TOP_LEVEL_MODULES) == []
    assert sorted(f for f in folders if not (ROOT / f / "__init__.py").is_file()) == []
    assert sorted(folders - set(LAYER)) == []


def test_the_checker_sees_every_import_and_every_string_dispatch():
    code = ("from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from llmops.cli import main\n"
            "else:\n    import llmops.env\n"
            "def f():\n    from llmops.runner.run import run_plan\n"
            "    from . import gc\n    from ..errors import StageError\n"
            "    import importlib\n    importlib.import_module('llmops.stages.sft')\n"
            "    __import__('llmops.stages.dpo')\n")
    found = _imports_in(code, "llmops.store")
    assert sorted({_unit(_module(m)) for _, m in found}) == [
        "cli", "env", "errors", "runner", "store"]
    assert (3, "llmops.cli.main") in found and (5, "llmops.env") in found
    assert (7, "llmops.runner.run.run_plan") in found and (8, "llmops.store.gc") in found
    assert (9, "llmops.errors.StageError") in found
    assert _dispatches_in(code) == [11, 12]
    assert _circles({"a": {"b"}, "b": {"c", "a"}, "c": set(), "d": {"d"}}) == [["a", "b"]]
