"""Cross-field rules of the quant group: a quantized base needs a LoRA adapter and bitsandbytes."""

from __future__ import annotations

from llmops.config.schema import AppConfig
from llmops.env import Environment
from llmops.errors import Problem


def quant_problems(cfg: AppConfig, env: Environment) -> list[Problem]:
    """Returns the problems of quant.type: no adapter to train on it, bitsandbytes missing."""
    out = []
    q, lora = cfg.quant.type, cfg.lora
    if q != "none" and not lora.enabled and cfg.train.method != "none":
        out.append(Problem(
            "quant.type",
            f"'{q}' freezes a quantized base, so it needs a LoRA adapter (got lora=none). "
            "Use lora=r16 with quant, or quant=none for full fine-tuning.",
        ))
    if q != "none" and not env.has("bitsandbytes"):
        out.append(Problem(
            "quant.type",
            f"'{q}' needs bitsandbytes, which is not installed. pip install 'llmops[quant]', "
            "or use quant=none.",
        ))
    return out
