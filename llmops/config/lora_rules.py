"""LoRA target modules checked against the model family's module names, where the family is known.

PEFT matches each list entry against a module's full name (equal to it, or ending in '.' + the
entry), and a string other than 'all-linear' as a regular expression over full names. An entry that
names no module, or a module LoRA cannot wrap, only fails once training starts; here it is a config
error. For a family not listed in FAMILIES any names are accepted. Pure: imports no torch.
"""

from __future__ import annotations

import re

from llmops.config.hints import did_you_mean
from llmops.config.schema import AppConfig
from llmops.env import Environment
from llmops.errors import Problem

ALL_LINEAR = "all-linear"
KEY = "lora.target_modules"

# Module names as transformers builds LlamaForCausalLM and Qwen2ForCausalLM (a test compares
# them with the real architectures): (name, LoRA can wrap it: a Linear or an Embedding).
_DECODER_TOP = (
    ("model", False), ("model.embed_tokens", True), ("model.layers", False),
    ("model.norm", False), ("model.rotary_emb", False), ("lm_head", True),
)
_DECODER_LAYER = (
    ("", False), (".self_attn", False), (".self_attn.q_proj", True), (".self_attn.k_proj", True),
    (".self_attn.v_proj", True), (".self_attn.o_proj", True), (".mlp", False),
    (".mlp.gate_proj", True), (".mlp.up_proj", True), (".mlp.down_proj", True),
    (".mlp.act_fn", False), (".input_layernorm", False), (".post_attention_layernorm", False),
)
FAMILIES = {"llama": (_DECODER_TOP, _DECODER_LAYER), "qwen2": (_DECODER_TOP, _DECODER_LAYER)}


def module_names(family: str, num_layers: int) -> dict[str, bool] | None:
    """Returns each module's full name and whether LoRA can wrap it; None for an unknown family."""
    if family not in FAMILIES:
        return None
    top, layer = FAMILIES[family]
    names = dict(top)
    for i in range(num_layers):
        names.update((f"model.layers.{i}{suffix}", ok) for suffix, ok in layer)
    return names


def target_problems(cfg: AppConfig, env: Environment) -> list[Problem]:
    """Returns the problem with lora.target_modules for the model's family, if any."""
    target, family = cfg.lora.target_modules, cfg.model.family
    if not cfg.lora.enabled or cfg.train.method == "none":
        return []
    if isinstance(target, str) and target.lower() == ALL_LINEAR:
        return []
    names = module_names(family, cfg.model.num_layers)
    if names is None:
        return []
    layers_first = sorted(names, key=lambda n: not n.startswith("model.layers."))
    short = list(dict.fromkeys(n.rsplit(".", 1)[-1] for n in layers_first if names[n]))
    allowed = f"Allowed for {family} models: {', '.join(short)}, or {KEY}={ALL_LINEAR}."
    if isinstance(target, str):
        return _pattern_problems(target, names, family, allowed)
    unknown = [e for e in target if not any(n == e or n.endswith(f".{e}") for n in names)]
    if unknown:
        hint = did_you_mean(unknown[0], [*short, ALL_LINEAR])
        what = ", ".join(repr(e) for e in unknown)
        verb = "is not a module" if len(unknown) == 1 else "are not modules"
        return [Problem(KEY, f"{what} {verb} of {family} models.{hint} {allowed}")]
    unwrappable = [e for e in target
                   if any((n == e or n.endswith(f".{e}")) and not names[n] for n in names)]
    if unwrappable:
        return [Problem(KEY, f"{', '.join(repr(e) for e in unwrappable)} names a block LoRA cannot "
                             f"wrap (only linear and embedding layers). {allowed}")]
    return []


def _pattern_problems(pattern: str, names: dict[str, bool], family: str,
                      allowed: str) -> list[Problem]:
    try:
        matched = [n for n in names if re.fullmatch(pattern, n)]
    except re.error as exc:
        return [Problem(KEY, f"{pattern!r} is neither {ALL_LINEAR} nor a valid regular expression "
                             f"({exc}). {allowed}")]
    if not matched:
        single = any(n.endswith(f".{pattern}") for n in names)
        fix = f"Write a list: {KEY}=[{pattern}]." if single else "Use a list of names instead."
        return [Problem(KEY, f"the pattern {pattern!r} matches no module of {family} models (a "
                             "string is a regular expression over full names, e.g. "
                             f"model.layers.0.self_attn.q_proj). {fix} {allowed}")]
    blocks = [n for n in matched if not names[n]]
    if blocks:
        return [Problem(KEY, f"the pattern {pattern!r} also matches {blocks[0]}, which LoRA cannot "
                             f"wrap (only linear and embedding layers). {allowed}")]
    return []
