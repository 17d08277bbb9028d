"""The precision rule: `train.precision=auto` and `quant.compute_dtype=auto`, resolved.

Pure. ``llmops.config.resolve`` applies it once per config; the memory planner applies the same
rule for a caller outside the compiler.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def precision_for(requested: str, hardware: Mapping[str, Any]) -> str:
    """Returns train.precision with auto resolved: fp32 on a CPU, bf16 where the GPU has it, else
    fp16."""
    if requested != "auto":
        return requested
    if hardware.get("device") != "cuda":
        return "fp32"
    return "bf16" if hardware.get("bf16") else "fp16"


def compute_dtype_for(requested: str, precision: str) -> str:
    """Returns quant.compute_dtype with auto resolved: the training precision's dtype."""
    return _DTYPES[precision] if requested == "auto" else requested
