"""Refuses config that would make Hydra run code: `_target_`s and logging factories.

Hydra instantiates `hydra.callbacks.*`, `hydra.launcher`, `hydra.sweeper` (and the Optuna
sweeper's `sampler`) from their `_target_`, and hands `hydra.job_logging`/`hydra.hydra_logging`
to logging's dictConfig, whose `()` and `class` keys call whatever they name. A config file or an
override could so open, truncate or run anything. Only these may be instantiated:

- at `hydra.launcher`, `hydra.sweeper` and below (e.g. `hydra.sweeper.sampler`): the targets that
  the installed launcher and sweeper plugins (and Hydra itself) register for those places in
  Hydra's ConfigStore, read from it, so a new plugin version needs no edit here;
- at `hydra.callbacks.NAME`: Hydra's own callbacks (`hydra.experimental.callbacks`);
- in logging config: `class` names of the `logging` package's handlers, formatters and filters
  (Hydra's own defaults use only those); `()` factories never; `ext://` only for `sys` streams.

Any other `_target_`, anywhere in the composed config, is a config error. llmops's own config
names registry options (`quant.type: nf4`), never Python objects.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from typing import Any

from llmops.errors import Problem

PLUGIN_PLACES = ("launcher", "sweeper")
LOGGING_NODES = ("job_logging", "hydra_logging")
# Keys that plugins resolve to a Python callable without a `_target_`: they must stay null.
CALLABLE_KEYS = {"hydra.sweeper.custom_search_space": "the Optuna sweeper calls this function"}


@functools.cache
def allowed_targets() -> dict[str, frozenset[str]]:
    """Maps each place Hydra instantiates (e.g. 'hydra.sweeper.sampler') to its allowed targets.

    Read from Hydra's ConfigStore, which Hydra and every installed plugin fill with the config
    of each launcher, sweeper and sampler option when Hydra's plugins are discovered.
    """
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins
    from omegaconf import OmegaConf

    Plugins.instance()  # imports hydra_plugins.*, whose config modules register their options
    found: dict[str, set[str]] = {}

    def collect(node: Any, place: str) -> None:
        if isinstance(node, dict):
            target = node.get("_target_")
            if isinstance(target, str):
                found.setdefault(place, set()).add(target)
            for key, value in node.items():
                collect(value, f"{place}.{key}")

    def walk(repo: dict[str, Any], group: str) -> None:
        for name, entry in repo.items():
            if isinstance(entry, dict):
                walk(entry, f"{group}/{name}")
            elif entry.node is not None:
                package = entry.package or group
                collect(OmegaConf.to_container(entry.node, resolve=False),
                        package.replace("/", "."))

    hydra_repo = ConfigStore.instance().repo.get("hydra", {})
    for place in PLUGIN_PLACES:
        walk(hydra_repo.get(place, {}), f"hydra/{place}")
    return {place: frozenset(targets) for place, targets in found.items()}


@functools.cache
def hydra_callbacks() -> frozenset[str]:
    """Returns the dotted names of Hydra's own callbacks (hydra.experimental.callbacks)."""
    import inspect

    from hydra.experimental import callbacks
    from hydra.experimental.callback import Callback

    return frozenset(f"{cls.__module__}.{name}" for name, cls in vars(callbacks).items()
                     if inspect.isclass(cls) and issubclass(cls, Callback) and cls is not Callback
                     and cls.__module__ == callbacks.__name__)


def _items(node: Any, path: tuple[str, ...],
           wanted: Callable[[tuple[str, ...]], bool] | None = None,
           ) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Yields (path, value) of every key under a DictConfig or ListConfig, resolved.

    A value that cannot be resolved before the run (e.g. `${hydra.runtime.output_dir}/x.log`)
    is yielded as its raw text. So is, at a path `wanted` declines (None: every path is wanted),
    text around an interpolation (`a ${x} b`, which resolves to text, never to a node to walk)
    and a reference to another key (`${train.seed}`, `${..x}`: that key is walked where it is):
    OmegaConf's parser takes longer over them than the rest of the walk. A resolver's value
    (`${oc.create:...}` may make a node) is always resolved and walked.
    """
    from omegaconf import Container, DictConfig, ListConfig, ValueNode
    from omegaconf.errors import OmegaConfBaseException

    keys = list(node.keys()) if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        child = node._get_node(key)
        here = (*path, str(key))
        if isinstance(child, ValueNode) and not child._is_interpolation():
            value = child._value()  # what node[key] returns, "???" if missing, without resolving
        elif (isinstance(child, Container) and not child._is_interpolation()
              and not child._is_missing()):
            value = None if child._is_none() else child
        elif wanted is not None and _unresolved_is_enough(child._value()) and not wanted(here):
            value = child._value()
        else:
            try:
                value = node[key]
            except OmegaConfBaseException:  # unresolvable until Hydra runs the job: its text
                value = child._value()
        yield here, value
        if isinstance(value, DictConfig | ListConfig):
            yield from _items(value, here, wanted)


#: An interpolation that only names another key of the config: `${a.b}`, `${..c}`, no resolver.
_KEY_REFERENCE = re.compile(r"\$\{\.*[\w\-]+(?:\.[\w\-]+)*\}")


def _unresolved_is_enough(raw: Any) -> bool:
    """Tells whether an interpolating value can be walked past unresolved: it surely resolves to
    text (it is not one `${...}`), or to a key the walk reaches where that key is."""
    return isinstance(raw, str) and (not (raw.startswith("${") and raw.endswith("}"))
                                     or _KEY_REFERENCE.fullmatch(raw) is not None)


def _checked_value(path: tuple[str, ...]) -> bool:
    """Tells whether target_problems reads the value at path (a `_target_`, a callable key)."""
    return path[-1] == "_target_" or ".".join(path) in CALLABLE_KEYS


def target_problems(cfg: Any) -> list[Problem]:
    """Lists every `_target_` (and callable-path key) that Hydra would instantiate but may not."""
    allowed = allowed_targets()
    problems = []
    for path, value in _items(cfg, (), _checked_value):
        key = ".".join(path)
        if key in CALLABLE_KEYS and value is not None:
            problems.append(Problem(key, f"'{value}' names Python code ({CALLABLE_KEYS[key]}); "
                                         "a config may not. Remove it (it must stay null)."))
        if path[-1] != "_target_":
            continue
        place = ".".join(path[:-1])
        if path[:2] == ("hydra", "callbacks") and len(path) == 4:
            ok = hydra_callbacks()
        else:
            ok = allowed.get(place, frozenset())
        if value in ok:
            continue
        if ok:
            fix = f"Allowed here: {', '.join(sorted(ok))}."
        else:
            fix = ("Nothing may be instantiated here: llmops config names registry options "
                   "(e.g. quant.type=nf4), never Python code.")
        problems.append(Problem(key, f"'{value}' may not be instantiated from a config. {fix} "
                                     f"Remove {key}."))
    return problems


def _allowed_logging_class(name: Any) -> bool:
    import logging
    import logging.handlers  # the file, rotating, socket ... handlers a config may name

    if not isinstance(name, str) or name.split(".")[0] != "logging":
        return False
    obj: Any = logging  # looked up, never imported: only the logging package is searched
    for part in name.split(".")[1:]:
        obj = getattr(obj, part, None)
    return isinstance(obj, type) and issubclass(obj, logging.Handler | logging.Formatter |
                                                logging.Filter)


def logging_problems(cfg: Any) -> list[Problem]:
    """Lists logging-config entries (hydra.job_logging, hydra.hydra_logging) that call code."""
    from omegaconf import DictConfig

    problems = []
    hydra = cfg.get("hydra") if isinstance(cfg, DictConfig) else None
    for name in LOGGING_NODES:
        node = hydra.get(name) if hydra is not None else None
        if not isinstance(node, DictConfig):
            continue
        for path, value in _items(node, ("hydra", name)):
            key = ".".join(path)
            if path[-1] == "()":
                problems.append(Problem(key, f"'{value}': a '()' factory in logging config calls "
                                             "any Python code. Remove it; use a 'class' from the "
                                             "logging package, e.g. logging.StreamHandler."))
            elif path[-1] == "class" and not _allowed_logging_class(value):
                problems.append(Problem(key, f"'{value}' is not a handler, formatter or filter "
                                             "class of the logging package. Use one, e.g. "
                                             "logging.FileHandler or logging.StreamHandler."))
            elif (isinstance(value, str) and value.startswith("ext://")
                  and not value.startswith("ext://sys.")):
                problems.append(Problem(key, f"'{value}' imports Python code. Only "
                                             "ext://sys.stdout and ext://sys.stderr are allowed "
                                             "in logging config."))
    return problems
