"""The architecture facts the planners need, derived from a model's config.json (pure arithmetic).

One table (ARCHITECTURES) says, per Hugging Face ``model_type``, which biases and norms a decoder
block has, the defaults its transformers config class uses for keys a config.json may leave out,
and the chat template family its instruct models use. ``count_params`` sums the parameters layer by
layer exactly as transformers builds the model (tests check it against
``AutoModelForCausalLM.from_config`` on the meta device); ``llmops.config.model_facts`` reads the
other facts.

Pure: no torch, no transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Architecture:
    """How one model_type's decoder is built, for counting its parameters.

    Attributes:
        qkv_bias: q/k/v projections carry a bias (None: the config's attention_bias decides).
        o_bias: o_proj carries a bias (None: the config's attention_bias decides).
        block_norms: RMSNorm weight vectors per block (2; Gemma 2 has 4).
        qk_norm: Per-head q/k norms (head_dim weights each), as in Qwen3.
        tie_default: tie_word_embeddings when config.json leaves it out.
        head_dim_default: head_dim when config.json leaves it out (None: hidden / heads).
        template: The TRL chat template (trl/chat_templates/NAME.jinja) of the family's instruct
            models, used when the model ships no template; None if TRL has none.
    """

    qkv_bias: bool | None = None
    o_bias: bool | None = None
    block_norms: int = 2
    qk_norm: bool = False
    tie_default: bool = False
    head_dim_default: int | None = None
    template: str | None = None


ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture(template="llama3_1"),
    "mistral": Architecture(qkv_bias=False, o_bias=False),
    "qwen2": Architecture(qkv_bias=True, o_bias=False, template="qwen2_5"),
    "qwen3": Architecture(qk_norm=True, template="qwen3"),
    "gemma": Architecture(tie_default=True, head_dim_default=256, template="gemma"),
    "gemma2": Architecture(block_norms=4, tie_default=True, head_dim_default=256,
                           template="gemma"),
    "phi3": Architecture(qkv_bias=False, o_bias=False, template="phi3"),
}

class UnknownArchitecture(ValueError):
    """config.json names a model_type this module cannot count (or lacks a key it needs)."""


def _int(config: dict[str, Any], key: str) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UnknownArchitecture(f"config.json has no positive integer '{key}' (got "
                                  f"{repr(value)[:60]})")
    return value


def _bool(config: dict[str, Any], key: str) -> bool:
    value = config.get(key, False)
    if value is not None and not isinstance(value, bool):
        raise UnknownArchitecture(f"config.json's '{key}' must be true or false (got "
                                  f"{str(value)[:60]!r})")
    return bool(value)


def count_params(config: dict[str, Any]) -> int:
    """Counts a decoder-only model's parameters from its config.json, as transformers builds it.

    Args:
        config: The parsed config.json.

    Raises:
        UnknownArchitecture: For a model_type outside ARCHITECTURES or a missing size key.
    """
    arch = architecture(config)
    h, layers, i = (_int(config, k) for k in ("hidden_size", "num_hidden_layers",
                                              "intermediate_size"))
    heads, vocab = _int(config, "num_attention_heads"), _int(config, "vocab_size")
    kv = heads if config.get("num_key_value_heads") is None else _int(config,
                                                                       "num_key_value_heads")
    hd = (_int(config, "head_dim") if config.get("head_dim") is not None
          else arch.head_dim_default or h // heads)
    bias = _bool(config, "attention_bias")
    qkv_bias = bias if arch.qkv_bias is None else arch.qkv_bias
    o_bias = bias if arch.o_bias is None else arch.o_bias
    mlp_bias = _bool(config, "mlp_bias")
    q, k = heads * hd, kv * hd
    attention = h * (q + 2 * k) + q * h + qkv_bias * (q + 2 * k) + o_bias * h
    mlp = 3 * h * i + mlp_bias * (2 * i + h)
    norms = arch.block_norms * h + (2 * hd if arch.qk_norm else 0)
    embed = vocab * h
    head = 0 if tied(config) else vocab * h
    return int(embed + layers * (attention + mlp + norms) + h + head)


def architecture(config: dict[str, Any]) -> Architecture:
    """Returns the table entry of config.json's model_type.

    Raises:
        UnknownArchitecture: When llmops does not know the model_type.
    """
    kind = config.get("model_type")
    if not isinstance(kind, str) or kind not in ARCHITECTURES:
        raise UnknownArchitecture(f"model_type {repr(kind)[:60]} is not one llmops can count "
                                  f"(known: {', '.join(ARCHITECTURES)})")
    return ARCHITECTURES[kind]


def tied(config: dict[str, Any]) -> bool:
    """Tells whether the input and output embeddings are shared (config.json's, else the
    architecture's default)."""
    value = config.get("tie_word_embeddings")
    return architecture(config).tie_default if value is None else _bool(
        config, "tie_word_embeddings")

