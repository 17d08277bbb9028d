"""Did-you-mean hints for misspelt keys, options and values: pure string helpers (a leaf).

The hint for an unknown key of a composition (which needs the composition and the schema) is
``llmops.config.hydra.unknown_keys``.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

# Names users bring from other tools (HF, axolotl, ...) mapped to llmops keys. A name that is a
# group's name, "_", then a key (PEFT's lora_dropout, lora_r) needs no entry: closest() strips it.
_ALIASES = {
    "rank": "r", "target": "target_modules", "lr": "learning_rate",
    "learning-rate": "learning_rate",
    "bs": "batch_size", "batch": "batch_size", "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum", "num_train_epochs": "epochs",
    "epoch": "epochs", "max_seq_length": "max_length", "seq_len": "max_length",
    "sequence_len": "max_length", "warmup": "warmup_steps", "steps": "max_steps",
}


def _groups() -> list[str]:
    import llmops.conf

    return llmops.conf.groups()


def closest(word: str, choices: Sequence[str]) -> str | None:
    """Returns the choice closest to word (or the one a known alias stands for), else None."""
    choices = [str(c) for c in choices]
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    if close:
        return close[0]
    group, _, key = str(word).partition("_")
    if key and group in _groups():  # lora_r -> r, train_lr -> learning_rate
        return closest(key, choices)
    aliases = [a for a, target in _ALIASES.items() if target in choices]
    alias = difflib.get_close_matches(str(word), aliases, n=1, cutoff=0.7)
    return _ALIASES[alias[0]] if alias else None


def did_you_mean(word: str, choices: Sequence[str], prefix: str = "") -> str:
    """Returns " Did you mean 'x'?" for the closest choice x (shown after prefix), else ''."""
    match = closest(word, choices)
    return f" Did you mean '{prefix}{match}'?" if match else ""
