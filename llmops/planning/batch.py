"""Resolves train.batch_size=auto / train.grad_accum=auto with the memory planner."""

from __future__ import annotations

from typing import Any

from llmops.planning.memory import estimate


def resolve_batch(model: dict[str, Any], lora: dict[str, Any] | None, quant: dict[str, Any],
                  train: dict[str, Any], hardware: dict[str, Any]) -> tuple[int, int]:
    """Returns (batch_size, grad_accum) with 'auto' replaced.

    auto batch_size is the largest divisor of train.effective_batch that fits the hardware's
    memory (1 when none does: the compute rule then reports the plan with its fixes); auto
    grad_accum keeps batch_size x grad_accum = effective_batch.
    """
    eff = int(train["effective_batch"])
    batch = train["batch_size"]
    if batch == "auto":
        probe = {**train, "batch_size": eff, "grad_accum": 1}
        advice = estimate(model, lora, quant, probe, hardware)["batch_advice"]
        batch = advice.get("batch_size") or 1
    batch = int(batch)
    accum = train["grad_accum"]
    accum = max(1, eff // batch) if accum == "auto" else int(accum)
    return batch, accum
