"""The package layout shows the architecture: layers import only downward, and nothing circles.

Every module under llmops/ is parsed with `ast`; its runtime imports (those inside functions
included, those under `if TYPE_CHECKING:` left out) are mapped to the package or top-level module
they land in, and each of those to its layer.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "llmops"

# Lowest first. A unit (a package or top-level module of llmops) may import its own layer or a
# lower one; a higher one only under `if TYPE_CHECKING:`.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("llmops", "errors", "env", "files", "conf"),
    ("scoring", "data"),
    ("planning",),
    ("config",),
    ("compiler",),
    ("store",),
    ("tracking",),
    ("runner",),
    ("backends",),
    ("serving",),
    ("stages",),
    ("cli", "compare", "gguf_setup", "__main__", "monitor"),
)
LAYER = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
# The loose modules the top level of llmops/ may hold: the package itself, the foundation modules
# every layer may import, and the commands (`python -m llmops.X`); all else lives in a package.
TOP_LEVEL_MODULES = {"__init__", "__main__", "errors", "env", "files", "compare", "gguf_setup"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(node: ast.AST):
    """Yields every node under node, skipping the bodies of `if TYPE_CHECKING:` blocks."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield other
                yield from _runtime_nodes(other)
            continue
        yield child
        yield from _runtime_nodes(child)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Returns (line, imported module) for each runtime import of an llmops module in path."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return _imports_in(path.read_text(encoding="utf-8"), package)


def _imports_in(source: str, package: str) -> list[tuple[int, str]]:
    """Returns (line, module) for each runtime llmops import in source, a module of package."""
    found = []
    for node in _runtime_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from a.b import c` may import the module a.b.c: keep the name, trim it later.
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return [(line, mod) for line, mod in found if mod == "llmops" or mod.startswith("llmops.")]


def _modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


MODULES = {_module_name(p) for p in _modules()}
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


def test_every_unit_has_a_layer():
    assert sorted(UNITS - set(LAYER)) == []


def test_no_import_from_a_lower_layer_up():
    upward = []
    for path in _modules():
        src = _unit(_module_name(path))
        for line, module in _imports(path):
            dst = _unit(module)
            if LAYER.get(dst, -1) > LAYER.get(src, len(LAYERS)):
                upward.append(f"{path.relative_to(ROOT.parent)}:{line} ({src}) imports {module} "
                              f"({dst}, a higher layer)")
    assert upward == []


def test_no_import_cycle_between_units():
    graph: dict[str, set[str]] = {}
    for path in _modules():
        src = _unit(_module_name(path))
        graph.setdefault(src, set()).update(
            dst for dst in (_unit(m) for _, m in _imports(path)) if dst != src)
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle between units: {' -> '.join(exc.args[1])}")


# config's own modules import each other inside functions (compose <-> hints); that package is
# reworked on its own branch, so its inner graph is not checked here.
@pytest.mark.parametrize("unit", sorted(u for u in UNITS if u != "config"))
def test_no_import_cycle_between_the_modules_of(unit):
    graph: dict[str, set[str]] = {}
    for path in _modules():
        src = _module_name(path)
        if _unit(src) == unit:
            graph[src] = {m for m in (_module(n) for _, n in _imports(path))
                          if _unit(m) == unit} - {src}
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle inside {unit}: {' -> '.join(exc.args[1])}")


def test_top_level_holds_only_foundation_modules_commands_and_packages():
    loose = {p.stem for p in ROOT.glob("*.py")}
    folders = {p.name for p in ROOT.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert sorted(loose - TOP_LEVEL_MODULES) == []
    assert sorted(f for f in folders if not (ROOT / f / "__init__.py").is_file()) == []
    assert sorted(folders - set(LAYER)) == []


def test_the_checker_sees_function_level_and_relative_imports_and_skips_type_checking():
    code = ("from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from llmops.cli import main\n"
            "else:\n    import llmops.env\n"
            "def f():\n    from llmops.runner.run import run_plan\n"
            "    from . import gc\n    from ..errors import StageError\n")
    assert [m for _, m in _imports_in(code, "llmops.store")] == [
        "llmops.env", "llmops.runner.run.run_plan", "llmops.store.gc", "llmops.errors.StageError"]
    assert [_unit(m) for _, m in _imports_in(code, "llmops.store")] == [
        "env", "runner", "store", "errors"]
