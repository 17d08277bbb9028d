"""Composes the config with Hydra's compose API and turns Hydra's own errors into Problems.

Used before Hydra's app runs (the pre-flight), so that a typo, an unknown group option or bad
override syntax is reported like every other config error: all at once, with the key, exit code 2.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmops.errors import ConfigError, Problem

CONFIG_MODULE = "llmops.conf"
CONFIG_NAME = "config"
_MAX_RETRIES = 20


def conf_dir() -> Path:
    """Returns the folder that holds the config groups (inside the installed package)."""
    import llmops.conf

    return Path(llmops.conf.__file__).parent


def group_options(group: str) -> list[str]:
    """Lists the option names of a config group: group_options('lora') -> ['none', 'r16', ...]."""
    folder = conf_dir() / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def groups() -> list[str]:
    """Lists the config groups (folders under conf/; hydra/ holds Hydra's own, e.g. launchers)."""
    return sorted(p.name for p in conf_dir().iterdir()
                  if p.is_dir() and not p.name.startswith("_") and p.name != "hydra")


# Names users bring from other tools (HF, axolotl, ...) mapped to llmops keys.
_ALIASES = {
    "rank": "r", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout",
    "target": "target_modules", "lr": "learning_rate", "learning-rate": "learning_rate",
    "bs": "batch_size", "batch": "batch_size", "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum", "num_train_epochs": "epochs",
    "epoch": "epochs", "max_seq_length": "max_length", "seq_len": "max_length",
    "sequence_len": "max_length", "warmup": "warmup_steps", "steps": "max_steps",
}


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """Returns " Did you mean 'x'?" for the closest choice (or known alias), else ''."""
    choices = [str(c) for c in choices]
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    if not close:
        aliases = [a for a, target in _ALIASES.items() if target in choices]
        alias = difflib.get_close_matches(str(word), aliases, n=1, cutoff=0.7)
        close = [_ALIASES[alias[0]]] if alias else []
    return f" Did you mean '{close[0]}'?" if close else ""


def config_loader() -> Any:
    """Returns a Hydra ConfigLoader over the packaged config (as Hydra's app builds its own)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path

    return ConfigLoaderImpl(config_search_path=create_config_search_path(f"pkg://{CONFIG_MODULE}"))


_COMPOSED: dict[tuple[tuple[str, ...], bool], Any] = {}


def compose(overrides: Sequence[str], *, return_hydra_config: bool = False) -> Any:
    """Composes the primary config with overrides; raises ConfigError listing every problem.

    Hydra stops at its first error, so each failing override is recorded, dropped, and the
    composition retried: the user sees all bad overrides at once. Successful compositions are
    memoised per process (the pre-flight asks for the same point more than once); callers must
    not mutate the returned config.
    """
    key = (tuple(overrides), return_hydra_config)
    if key not in _COMPOSED:
        _COMPOSED[key] = _compose(overrides, return_hydra_config)
    return _COMPOSED[key]


def _compose(overrides: Sequence[str], return_hydra_config: bool) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    problems = parse_problems(overrides)
    bad = {ov for ov, _ in problems}
    remaining = [ov for ov in overrides if ov not in bad]
    problems = [p for _, p in problems]
    for _ in range(_MAX_RETRIES):
        GlobalHydra.instance().clear()
        try:
            with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
                cfg = hydra_compose(
                    config_name=CONFIG_NAME,
                    overrides=remaining,
                    return_hydra_config=return_hydra_config,
                )
        except Exception as exc:  # Hydra raises several unrelated exception types here.
            problem, culprit = hydra_problem(exc, remaining)
            problems.append(problem)
            if culprit is None or culprit not in remaining:
                raise ConfigError(problems) from None
            remaining.remove(culprit)
            continue
        finally:
            GlobalHydra.instance().clear()
        if problems:
            raise ConfigError(problems)
        return cfg
    raise ConfigError(problems)


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


def _key_suggestion(key: str) -> str:
    """Suggests the closest existing key for a dotted key that Hydra could not find."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import DictConfig

    parts = key.split(".")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            node: Any = hydra_compose(config_name=CONFIG_NAME)
    except Exception:
        return ""
    finally:
        GlobalHydra.instance().clear()
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig):
            return ""
        keys = [str(k) for k in node.keys()]
        if part not in keys:
            if i == 0:
                keys = sorted(set(keys) | set(groups()))
            hint = did_you_mean(part, keys)
            under = ".".join(parts[:i])
            where = f"under '{under}'" if under else "at the top level"
            return f"{hint} Keys allowed {where}: {', '.join(sorted(keys))}."
        node = node[part]
    return ""


def hydra_problem(exc: BaseException, overrides: Sequence[str]) -> tuple[Problem, str | None]:
    """Translates one Hydra composition error into a Problem and the override that caused it."""
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
            hint = _key_suggestion(key)
            text = f"unknown key.{hint} Fix the spelling, or list keys with --cfg job."
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
    m = re.search(r"Interpolation key '([^']+)' not found", msg)
    if m:
        first = msg.splitlines()[0]
        return Problem(m.group(1), f"referenced by an interpolation but not set ({first})."), None
    first_line = msg.strip().splitlines()[0] if msg.strip() else type(exc).__name__
    return Problem("config", f"{first_line}"), None
