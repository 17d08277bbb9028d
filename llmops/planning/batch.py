"""Resolves train.batch_size=auto / train.grad_accum=auto with the memory planner."""

from __future__ import annotations

from typing import Any

from llmops.planning.memory import estimate


def resolve_batch(model: dict[str, Any], lora: dict[str, Any] | None, quant: dict[str, Any],
                  train: dict[str, Any], hardware: dict[str, Any],
                  distributed: dict[str, Any] | None = None) -> tuple[int, int]:
    """Returns (batch_size, grad_accum) with 'auto' replaced.

    train.effective_batch counts the rows of one optimizer step over all processes (the world
    size of `distributed`, 1 without): each process takes effective_batch / world of them. auto
    batch_size is the largest divisor of that share that fits one device's memory (1 when none
    does: the compute rule then reports the plan with its fixes); auto grad_accum keeps
    batch_size x grad_accum x world = effective_batch.
    """
    world = int(distributed["world_size"]) if distributed else 1
    eff = max(1, int(train["effective_batch"]) // world)
    batch = train["batch_size"]
    if batch == "auto":
        probe = {**train, "batch_size": eff, "grad_accum": 1}
        advice = estimate(model, lora, quant, probe, hardware,
                          distributed=distributed)["batch_advice"]
        batch = advice.get("batch_size") or 1
    batch = int(batch)
    accum = train["grad_accum"]
    accum = max(1, eff // batch) if accum == "auto" else int(accum)
    return batch, accum
