"""Composes the config as Hydra's app will, and turns Hydra's own errors into Problems.

Used before Hydra's app runs (the pre-flight), so that a typo, an unknown group option or bad
override syntax is reported like every other config error: all at once, with the key, exit code 2.
The search path is the app's, `-cp`/`-cn`/`-cd` included (Source).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterator, Sequence
from typing import Any

from llmops.conf import libyaml
from llmops.config.hints import did_you_mean
from llmops.config.hydra.groups import group_options, groups
from llmops.config.hydra.searchpath import search_path_problems
from llmops.config.hydra.source import APP_MODULE, DEFAULT, Source
from llmops.errors import ConfigError, Problem

_MAX_RETRIES = 20
UNKNOWN_KEY = "unknown key."
_COMPOSED: dict[tuple[Source, tuple[str, ...], bool], Any] = {}
_GATE_OVERRIDE = re.compile(r"^eval\.gates\.[^=]+=")


def gate_overrides(overrides: Sequence[str]) -> list[str]:
    """Lets `eval.gates.NAME.FIELD=VALUE` set a gate whatever eval.gates holds.

    Under `eval.gates: auto` (a string) Hydra cannot set a key without `+`; `++` sets it either
    way (a new key under a fresh mapping, or an existing one), so users never need the prefix.
    """
    return [f"++{ov}" if _GATE_OVERRIDE.match(ov) else ov for ov in overrides]


def compose(overrides: Sequence[str], *, return_hydra_config: bool = False,
            source: Source = DEFAULT) -> Any:
    """Composes the primary config with overrides; raises ConfigError listing every problem.

    Hydra stops at its first error, so each failing override is recorded, dropped, and the
    composition retried: the user sees all bad overrides at once. Successful compositions are
    memoised per process (the pre-flight asks for the same point more than once); callers must
    not mutate the returned config.
    """
    overrides = gate_overrides(overrides)
    key = (source, tuple(overrides), return_hydra_config)
    if key not in _COMPOSED:
        _COMPOSED[key] = _compose(list(overrides), return_hydra_config, source)
    return _COMPOSED[key]


def compose_to_keep(overrides: Sequence[str], *, source: Source = DEFAULT) -> Any:
    """Returns compose(overrides, return_hydra_config=True) for the caller to change.

    The memoised composition is handed over and forgotten (no copy of the whole config), so a
    later compose() of the same point composes afresh; without one, it is composed here.
    """
    key = (source, tuple(gate_overrides(overrides)), True)
    if key in _COMPOSED:
        return _COMPOSED.pop(key)
    return _compose(list(key[1]), True, source)


@contextlib.contextmanager
def _choices_on_demand() -> Iterator[None]:
    """Makes Hydra build the map of group choices a defaults list interpolates only for a
    defaults list that interpolates one.

    Hydra 1.3 builds that map (`${db}_${model}` entries resolve against it) after every config
    it loads, as a fresh OmegaConf of every choice made so far: about a tenth of composing
    llmops's ~35 configs (every option inherits its group's _base), none of whose defaults
    lists interpolates. A defaults list with an interpolation gets Hydra's own map, as before;
    without one, the map is never read (the composition is the same, tests/config/test_config).
    """
    from hydra._internal import defaults_list

    build = defaults_list._create_interpolation_map

    def on_demand(overrides: Any, defaults: list[Any], self_added: bool) -> Any:
        if any(not d.is_self() and d.is_interpolation() for d in defaults):
            return build(overrides, defaults, self_added)
        return None

    defaults_list._create_interpolation_map = on_demand
    try:
        yield
    finally:
        defaults_list._create_interpolation_map = build


@contextlib.contextmanager
def _store_not_copied() -> Iterator[None]:
    """Lets Hydra's copy of its config repository share the ConfigStore instead of copying it.

    Hydra 1.3 deep-copies its config repository before it composes, so that composing leaves the
    one it keeps as it was. The copy takes in the ConfigStore, the process's one registry of
    structured configs (Hydra's own and every installed plugin's: about 1,000 objects), which
    composing only reads: ConfigStore.load returns a copy of the config it holds. Meanwhile a
    copy of the store is the store itself, as a singleton's copy is; that saves about a twentieth
    of composing llmops's config (the composition is the same, tests/config/test_compose_choices).
    """
    from hydra.core.config_store import ConfigStore

    if "__deepcopy__" in vars(ConfigStore):  # a Hydra that defines it, or a composition within one
        yield
        return
    ConfigStore.__deepcopy__ = lambda self, memo: self  # type: ignore[attr-defined]
    try:
        yield
    finally:
        del ConfigStore.__deepcopy__  # type: ignore[attr-defined]


@contextlib.contextmanager
def _roots_reparented_once() -> Iterator[None]:
    """Re-parents each config that Hydra merges into as a whole once, when composing ends,
    instead of after every merge into it.

    OmegaConf 2.3 ends every merge by walking the whole tree merged into and setting each
    node's parent, whatever the merge changed. Hydra merges each of the ~35 configs that make
    llmops's config into one growing tree, so each merge walks everything merged before it:
    about a fifth of composing. A merge into a mapping already sets the parent of every node it
    moves or makes in it (`_set_item_impl`), and a mapping or list within it is re-parented by
    its own merge as before. So, while Hydra composes, the closing walk of a merge into a
    mapping at the root of a tree is left out, and each such tree is walked once when composing
    ends (a list at the root is re-parented as before: OmegaConf's list merge leaves its items'
    parents to that walk). The composition is the same, parents included
    (tests/config/test_compose_choices).
    """
    from omegaconf import DictConfig
    from omegaconf.basecontainer import BaseContainer

    merge_with, re_parent = BaseContainer._merge_with, BaseContainer._re_parent
    if getattr(merge_with, "_llmops_roots", False):  # a composition within one: as it is
        yield
        return
    merging: list[Any] = []  # the roots whose merge is running, innermost last
    deferred: dict[int, Any] = {}  # the roots whose closing walk was left out, by id

    def _merge_with(self: Any, *others: Any) -> None:
        if not isinstance(self, DictConfig) or self._get_parent() is not None:
            return merge_with(self, *others)
        merging.append(self)
        try:
            return merge_with(self, *others)
        finally:
            merging.pop()

    def _re_parent(self: Any) -> None:
        if merging and merging[-1] is self:
            deferred[id(self)] = self
            return
        re_parent(self)

    _merge_with._llmops_roots = True  # type: ignore[attr-defined]
    BaseContainer._merge_with = _merge_with  # type: ignore[method-assign]
    BaseContainer._re_parent = _re_parent  # type: ignore[method-assign]
    try:
        yield
    finally:
        BaseContainer._merge_with = merge_with  # type: ignore[method-assign]
        BaseContainer._re_parent = re_parent  # type: ignore[method-assign]
        for root in deferred.values():
            re_parent(root)


@contextlib.contextmanager
def _configs_embedded_uncopied() -> Iterator[None]:
    """Lets Hydra embed a config that the defaults list holds once at its package without
    copying it.

    Hydra 1.3 loads each config of a composition into a cache of that composition, then embeds
    it at its package (`model:` for model/tiny.yaml) in a fresh mapping, which deep-copies it so
    that the cached config stays as loaded for a second use, and merges that into the
    composition. A config the defaults list holds once has no second use: it is moved into the
    fresh mapping instead (about a tenth of composing llmops's config). A config it holds twice
    (one option under two packages) is copied as before; so is everything Hydra embeds outside
    a composition's defaults list. The composition is the same, node for node
    (tests/config/test_compose_choices).
    """
    from collections import Counter

    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from omegaconf import OmegaConf

    names = ("_compose_config_from_defaults_list", "_load_single_config", "_embed_result_config")
    own = {name: vars(ConfigLoaderImpl)[name] for name in names}  # put back as they were
    compose_from, load_single, embed = (getattr(ConfigLoaderImpl, name) for name in names)
    if getattr(compose_from, "_llmops_uncopied", False):  # a composition within one: as it is
        yield
        return
    once: set[str] = set()  # the config paths the defaults list being composed holds once
    loading: list[bool] = [False]  # whether the config being loaded is one of them

    def _compose_from(self: Any, defaults: list[Any], repo: Any) -> Any:
        counts = Counter(d.config_path for d in defaults)
        once.clear()
        once.update(path for path, n in counts.items() if n == 1 and path is not None)
        try:
            return compose_from(self, defaults, repo)
        finally:
            once.clear()

    def _load_single(self: Any, default: Any, repo: Any) -> Any:
        loading.append(default.config_path in once)
        try:
            return load_single(self, default, repo)
        finally:
            loading.pop()

    def _embed(ret: Any, package_override: str | None) -> Any:
        package = ret.header["package"] if package_override is None else package_override
        if not (loading[-1] and package):
            return embed(ret, package_override)
        # Hydra's own embedding (ConfigLoaderImpl._embed_result_config), less the copy
        cfg = OmegaConf.create(flags={"no_deepcopy_set_nodes": True})
        OmegaConf.update(cfg, package, ret.config, merge=False)
        cfg._set_flag("no_deepcopy_set_nodes", None)
        return dataclasses.replace(ret, config=cfg)

    _compose_from._llmops_uncopied = True  # type: ignore[attr-defined]
    for name, value in zip(names, (_compose_from, _load_single, staticmethod(_embed)),
                           strict=True):
        setattr(ConfigLoaderImpl, name, value)
    try:
        yield
    finally:
        for name, value in own.items():
            setattr(ConfigLoaderImpl, name, value)


def _hydra_compose(overrides: list[str], source: Source) -> Any:
    """Composes once with Hydra, as its app does for a run; returns the config with `hydra`."""
    from hydra import version
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import detect_task_name
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    version.setbase("1.3")
    search_path = source.search_path()
    GlobalHydra.instance().clear()
    try:
        hydra = Hydra.create_main_hydra2(task_name=detect_task_name(None, APP_MODULE),
                                         config_search_path=search_path)
        with libyaml(), _choices_on_demand(), _store_not_copied(), _roots_reparented_once(), \
                _configs_embedded_uncopied():
            return hydra.compose_config(config_name=source.config_name, overrides=overrides,
                                        run_mode=RunMode.RUN, from_shell=False,
                                        with_log_configuration=False)
    finally:
        GlobalHydra.instance().clear()


def _compose(overrides: list[str], return_hydra_config: bool, source: Source) -> Any:
    from omegaconf import open_dict

    problems = parse_problems(overrides) + base_problems(overrides)
    bad = {ov for ov, _ in problems}
    remaining = [ov for ov in overrides if ov not in bad]
    problems = [p for _, p in problems]
    unknown: dict[int, str | None] = {}  # problem index -> override naming an unknown key
    source.search_path()  # a bad -cp/-cd is reported as itself, not as a composition error
    unsafe = search_path_problems(remaining, source)  # before Hydra imports a pkg:// entry
    if unsafe:
        raise ConfigError([*problems, *unsafe])
    for _ in range(_MAX_RETRIES):
        try:
            cfg = _hydra_compose(remaining, source)
        except Exception as exc:  # Hydra raises several unrelated exception types here.
            bad_source = _source_problem(exc, source)
            if bad_source:
                raise ConfigError([*problems, bad_source]) from None
            problem, culprit = hydra_problem(exc, remaining)
            if problem.message.startswith(UNKNOWN_KEY):
                unknown[len(problems)] = culprit
            problems.append(problem)
            if culprit is None or culprit not in remaining:
                raise ConfigError(problems) from None
            remaining.remove(culprit)
            continue
        if problems:  # hints come from the user's composition, less the bad overrides
            raise ConfigError([_with_hint(p, unknown[i], cfg) if i in unknown else p
                               for i, p in enumerate(problems)])
        if not return_hydra_config:
            with open_dict(cfg):
                del cfg["hydra"]
        return cfg
    raise ConfigError(problems)


def _source_problem(exc: BaseException, source: Source) -> Problem | None:
    """Names the -cp/-cn flag whose value Hydra could not find, if that is the error."""
    msg = str(exc)
    if "Primary config directory not found" in msg:
        return Problem("--config-path", (
            f"'{source.config_path}' is not a folder of configs. Give a folder holding "
            f"{source.config_name}.yaml, or leave --config-path out for llmops's own configs."))
    if "Cannot find primary config" in msg:
        return Problem("--config-name", (
            f"'{source.config_name}' is not a config in the search path. Give the name of a YAML "
            "file (without .yaml) in --config-path or --config-dir; llmops's own is 'config'."))
    return None


def _with_hint(problem: Problem, culprit: str | None, cfg: Any) -> Problem:
    from llmops.config.hydra.unknown_keys import unknown_key_hint

    hint = unknown_key_hint(problem.key, culprit, cfg)
    return Problem(problem.key, f"{UNKNOWN_KEY}{hint} Fix the spelling, or list keys with "
                                "--cfg job.")


def base_problems(overrides: Sequence[str]) -> list[tuple[str, Problem]]:
    """Refuses a group's base (conf/<group>/_base.yaml, which its options inherit) chosen as if it
    were an option (lora=_base): Hydra would compose it, but it is no complete option."""
    found = []
    for ov in overrides:
        m = re.match(r"^[+~]?([A-Za-z_]\w*)(@[\w.]+)?=(.*)$", ov)
        if not m or m.group(1) not in groups():
            continue
        based = [v.strip() for v in m.group(3).split(",") if v.strip().startswith("_")]
        if based:
            options = group_options(m.group(1))
            found.append((ov, Problem(m.group(1), (
                f"'{based[0]}' is the base that this group's options inherit, not an option. "
                f"Options: {', '.join(options)}."))))
    return found


def parse_problems(overrides: Sequence[str]) -> list[tuple[str, Problem]]:
    """Parses each override on its own with Hydra's grammar; returns the ones that fail."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    found = []
    for ov in overrides:
        try:
            parser.parse_overrides([ov])
        except Exception as exc:  # OverrideParseException and lexer errors
            lines = [ln.strip() for ln in str(exc).splitlines()]
            lines = [ln for ln in lines if ln and not ln.startswith(("See https", "^"))]
            reason = next((ln for ln in lines if not ln.startswith("Error parsing")), "bad syntax")
            key = re.split(r"[=@]", ov.lstrip("+~"), maxsplit=1)[0] or ov
            text = (
                f"cannot parse override '{ov}' ({reason}). Write key=value or group=option "
                "(key=a,b sweeps with -m); quote values that hold spaces or brackets: "
                "'key=\"a b\"'."
            )
            found.append((ov, Problem(key, text)))
    return found


def _find_override(key: str, overrides: Sequence[str]) -> str | None:
    for ov in overrides:
        name = re.split(r"[=@]", ov.lstrip("+~"), maxsplit=1)[0]
        if name == key:
            return ov
    return None


def hydra_problem(exc: BaseException, overrides: Sequence[str]) -> tuple[Problem, str | None]:
    """Translates one Hydra composition error into a Problem and the override that caused it.

    An unknown key's problem says only "unknown key."; compose() adds the hint once it has the
    user's composition.
    """
    msg = str(exc)
    m = re.search(r"Could not override '([^']+)'", msg)
    if m:
        key = m.group(1)
        culprit = _find_override(key, overrides)
        if "No match in the defaults list" in msg:
            hint = did_you_mean(key, groups())
            text = (
                f"unknown config group '{key}'.{hint} Groups: {', '.join(groups())}. "
                f"To add a new top-level key on purpose, write +{culprit}."
            )
        else:
            text = UNKNOWN_KEY
        return Problem(key, text), culprit
    m = re.search(r"Could not append to config. An item is already at '([^']+)'", msg)
    if m:
        key = m.group(1)
        culprit = _find_override(key, overrides)
        value = culprit.split("=", 1)[1] if culprit and "=" in culprit else "..."
        text = f"already exists, so '+{key}' (add a new key) does not apply. Write {key}={value}."
        return Problem(key, text), culprit
    m = re.search(r"Could not find '([^']+)/([^']+)'", msg)
    if m:
        group, option = m.group(1), m.group(2)
        options = group_options(group)
        culprit = _find_override(group, overrides)
        text = (
            f"'{option}' is not an option of this group.{did_you_mean(option, options)} "
            f"Options: {', '.join(options)}."
        )
        return Problem(group, text), culprit
    if isinstance(exc, KeyError) and _find_override("hydra.job.env_copy", overrides):
        culprit = _find_override("hydra.job.env_copy", overrides)
        return Problem("hydra.job.env_copy", (
            f"{msg} is not set in the environment, so Hydra cannot copy it. Set it, or remove it "
            "from hydra.job.env_copy.")), culprit
    m = re.search(r"Interpolation key '([^']+)' not found", msg)
    if m:
        first = msg.splitlines()[0]
        return Problem(m.group(1), f"referenced by an interpolation but not set ({first})."), None
    first_line = msg.strip().splitlines()[0] if msg.strip() else type(exc).__name__
    return Problem("config", f"{first_line}"), None
