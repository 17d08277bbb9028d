"""Refuses search path entries that would make Hydra import a module while it composes.

Hydra reads `pkg://NAME` configs through importlib.resources, which imports NAME (running its
code), and `structured://NAME` imports NAME outright, both before any llmops check could run on
the composed config; `python -m llmops` also puts the working folder on `sys.path`. So the search
path (`--config-path`, `hydra.searchpath` overrides and the primary config's own
`hydra.searchpath`) is checked first, without importing anything. Allowed:

- `file://FOLDER` (or a bare folder): Hydra only reads YAML files there;
- `pkg://PACKAGE` of llmops itself, of a module already imported, or of a package that an
  installed distribution provides and that is not found in the working folder, located with
  importlib's finders (which import nothing for a top-level name).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from collections.abc import Iterator, Sequence
from importlib.machinery import ModuleSpec, PathFinder
from typing import TYPE_CHECKING, Any

from llmops.errors import Problem

if TYPE_CHECKING:
    from llmops.config.hydra.source import Source

SEARCHPATH = "hydra.searchpath"
APP_PACKAGE = "llmops"
ALLOWED = ("Allowed: file://FOLDER (a folder of configs), or pkg://PACKAGE of an installed "
           "distribution (never a module of the working folder).")
_FLAGS = {"main": "--config-path", "command-line": "--config-dir"}


@functools.cache
def installed_packages() -> frozenset[str]:
    """Returns the top-level import names that installed distributions provide."""
    from importlib.metadata import packages_distributions

    return frozenset(packages_distributions())


def _find(name: str, locations: Sequence[str] | None) -> ModuleSpec | None:
    """Finds a module's spec without importing it (or its parents)."""
    if name in sys.modules:
        return getattr(sys.modules[name], "__spec__", None)
    if locations is None:
        return importlib.util.find_spec(name)  # a top-level name: nothing is imported
    return PathFinder.find_spec(name, list(locations))


def _entry_folder(spec: ModuleSpec, depth: int) -> str | None:
    """Returns the sys.path folder a module was found in (None for a namespace package)."""
    if not spec.has_location or not spec.origin:
        return None
    folder = os.path.dirname(spec.origin)
    if spec.submodule_search_locations is not None:  # a package: origin is its __init__.py
        folder = os.path.dirname(folder)
    for _ in range(depth):
        folder = os.path.dirname(folder)
    return os.path.realpath(folder)


def package_problem(name: str) -> str | None:
    """Says why Hydra may not import the package `name` for a pkg:// entry, else None."""
    parts = name.split(".")
    if not all(part.isidentifier() for part in parts):
        return f"'{name}' is not a package name"
    if name in sys.modules or parts[0] == APP_PACKAGE:
        return None  # already imported (nothing runs again), or llmops's own configs
    working = os.path.realpath(os.getcwd())
    locations: Sequence[str] | None = None
    for depth in range(len(parts)):
        module = ".".join(parts[: depth + 1])
        try:
            spec = _find(module, locations)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            return f"no package '{module}' is installed"
        if _entry_folder(spec, depth) == working:
            return (f"'{module}' is found in the working folder ({spec.origin}), and Hydra "
                    "would import it, running its code, while composing")
        locations = spec.submodule_search_locations
        if locations is None:
            return f"'{module}' is a module, not a package of configs"
    if parts[0] not in installed_packages():
        return (f"'{parts[0]}' is not a package of an installed distribution, and Hydra would "
                "import it, running its code, while composing")
    return None


def entry_problem(entry: str) -> str | None:
    """Says why a search path entry (e.g. 'pkg://pwn') may not be used, else None."""
    scheme, sep, path = entry.partition("://")
    if not sep or scheme == "file":
        return None
    if scheme == "structured":
        return None if not path else (f"structured:// imports the module '{path}', running "
                                      "its code, while composing")
    if scheme == "pkg":
        return package_problem(path.replace("/", ".").rstrip("."))
    return f"'{scheme}://' is not a scheme llmops lets Hydra read configs from"


def _strings(value: Any) -> Iterator[str]:
    """Yields the strings of an override's value: a list, or every list of a sweep."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)
    elif isinstance(getattr(value, "list", None), list):  # a choice sweep of lists
        yield from _strings(value.list)


def _override_entries(overrides: Sequence[str]) -> Iterator[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for line in overrides:
        try:
            override = parser.parse_overrides([line])[0]
        except Exception:  # a syntax error: Hydra stops on it too, before importing anything
            continue
        if override.key_or_group == SEARCHPATH and override.value() is not None:
            yield from _strings(override.value())


def _primary_entries(source: Source) -> tuple[list[str], str]:
    """Reads the primary config's own hydra.searchpath, as Hydra does before composing.

    llmops's own configs (no -cp, -cn, -cd) are read from llmops.conf's config.yaml, the file
    Hydra's search path finds first for them, without building a repository of the search path.
    """
    from hydra._internal.config_repository import ConfigRepository
    from omegaconf import ListConfig, OmegaConf

    from llmops.conf import libyaml, load_primary
    from llmops.config.hydra.source import CONFIG_MODULE, DEFAULT

    if source == DEFAULT:
        own = (load_primary().get("hydra") or {}).get("searchpath")
        where = f" (in pkg://{CONFIG_MODULE}/{source.config_name}.yaml)"
        return ([str(v) for v in own], where) if isinstance(own, list) else ([], "")
    try:
        with libyaml():
            found = ConfigRepository(source.search_path()).load_config(source.config_name)
        value = OmegaConf.select(found.config, SEARCHPATH) if found is not None else None
    except Exception:  # Hydra's own read fails the same way, before it imports any entry
        return [], ""
    if not isinstance(value, ListConfig):  # absent, or not a list: Hydra refuses it itself
        return [], ""
    return [str(v) for v in value], f" (in {found.path}/{source.config_name}.yaml)"


def search_path_problems(overrides: Sequence[str], source: Source) -> list[Problem]:
    """Lists the search path entries that would make Hydra import a module while composing.

    Args:
        overrides: The overrides (those that do not parse are left to Hydra's own error).
        source: Where the configs come from (-cp, -cn, -cd).

    Raises:
        ConfigError: A -cp or -cd that is not a folder (Source.search_path).
    """
    problems = []
    for entry in source.search_path().get_path():
        why = entry_problem(str(entry.path))
        if why:
            flag = _FLAGS.get(str(entry.provider), f"search path ({entry.provider})")
            shown = source.config_path if flag == "--config-path" else entry.path
            problems.append(Problem(flag, (
                f"'{shown}' makes Hydra read {entry.path}: {why}. Give a folder instead, "
                "e.g. --config-dir ./my_conf (or --config-path /abs/folder).")))
    if problems:  # the primary config itself would come from there: read nothing more
        return problems
    primary, where = _primary_entries(source)
    for entry, origin in [*((e, "") for e in _override_entries(overrides)),
                          *((e, where) for e in primary)]:
        why = entry_problem(entry)
        if why:
            problems.append(Problem(SEARCHPATH, (
                f"'{entry}'{origin}: {why}. {ALLOWED} Use e.g. "
                "hydra.searchpath=[file://./my_conf], or remove it.")))
    return problems
