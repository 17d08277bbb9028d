"""Did-you-mean hints for misspelt keys, options and values.

A hint for an unknown key is computed from the user's own composition (the options they chose,
not the defaults), and names the full key they can paste (`lora.r`, not `r`). A key that the
schema knows but the chosen option does not set (`tracking.project` under tracking=none) says
which options set it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import Any

# Names users bring from other tools (HF, axolotl, ...) mapped to llmops keys.
_ALIASES = {
    "rank": "r", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout",
    "target": "target_modules", "lr": "learning_rate", "learning-rate": "learning_rate",
    "bs": "batch_size", "batch": "batch_size", "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum", "num_train_epochs": "epochs",
    "epoch": "epochs", "max_seq_length": "max_length", "seq_len": "max_length",
    "sequence_len": "max_length", "warmup": "warmup_steps", "steps": "max_steps",
}


def closest(word: str, choices: Sequence[str]) -> str | None:
    """Returns the choice closest to word (or the one a known alias stands for), else None."""
    choices = [str(c) for c in choices]
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    if close:
        return close[0]
    aliases = [a for a, target in _ALIASES.items() if target in choices]
    alias = difflib.get_close_matches(str(word), aliases, n=1, cutoff=0.7)
    return _ALIASES[alias[0]] if alias else None


def did_you_mean(word: str, choices: Sequence[str], prefix: str = "") -> str:
    """Returns " Did you mean 'x'?" for the closest choice x (shown after prefix), else ''."""
    match = closest(word, choices)
    return f" Did you mean '{prefix}{match}'?" if match else ""


def _override_with(culprit: str | None, key: str, fixed: str) -> str:
    """Rewrites the override the user typed with the fixed key ('lora.rr=3' -> 'lora.r=3')."""
    if not culprit:
        return f"{fixed}=..."
    m = re.match(r"^([+~]*)([^=@]+)(.*)$", culprit)
    return f"{m.group(1)}{fixed}{m.group(3)}" if m and m.group(2) == key else f"{fixed}=..."


def _sets(option_file: Any, path: Sequence[str]) -> bool:
    from omegaconf import DictConfig, OmegaConf

    node: Any = OmegaConf.load(option_file)
    for part in path:
        if not isinstance(node, DictConfig) or part not in node:
            return False
        node = node._get_node(part)
    return True


def unknown_key_hint(key: str, culprit: str | None, cfg: Any) -> str:
    """Suggests the key meant by an override of a key that the composition `cfg` does not have.

    Args:
        key: The dotted key Hydra could not override, e.g. 'lora.rr'.
        culprit: The override that named it, e.g. 'lora.rr=3'.
        cfg: The user's composition without that override (with its hydra node, if any).
    """
    from omegaconf import DictConfig, OmegaConf

    from llmops.config.hydra.compose import conf_dir, groups
    from llmops.config.validate import schema_fields

    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig):
            return ""
        keys = [str(k) for k in node.keys()]
        if part in keys:
            node = node._get_node(part)
            continue
        under = ".".join(parts[:i])
        if i == 0:
            keys = sorted(set(keys) | set(groups()))
        listed = f" Keys allowed {f'under {under!r}' if under else 'at the top level'}: " \
                 f"{', '.join(sorted(keys))}."
        match = closest(part, keys)
        if match:
            return f" Did you mean '{'.'.join([*parts[:i], match, *parts[i + 1:]])}'?{listed}"
        match = closest(part, [f for f in schema_fields(parts[:i]) if f not in keys])
        if not match:
            return listed
        fixed = ".".join([*parts[:i], match, *parts[i + 1:]])
        group = parts[0]
        choice = OmegaConf.select(cfg, f"hydra.runtime.choices.{group}", default=None)
        setters = [p.stem for p in sorted((conf_dir() / group).glob("*.yaml"))
                   if _sets(p, [*parts[1:i], match])]
        options = " or ".join(f"{group}={o}" for o in setters)
        chosen = f"{group}={choice}" if choice else "the chosen option"
        # The key is spelled right but belongs to other options: no "did you mean" the same key.
        lead = f" {chosen} does not set {key!r}:" if fixed == key else \
            f" Did you mean '{fixed}'? {chosen} does not set it:"
        return (f"{lead} "
                f"{f'choose {options}, or ' if options else ''}add it with "
                f"'+{_override_with(culprit, key, fixed).lstrip('+')}'.{listed}")
    return ""
