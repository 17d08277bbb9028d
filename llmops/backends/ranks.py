"""What a training process needs to know about the other processes of its job.

Light at import time (no torch): the parent runner, the launched ranks and the backends all read
it. A rank learns its place from the environment its launcher set (torchrun, accelerate launch,
or submitit's TorchDistributedEnvironment): RANK, WORLD_SIZE, LOCAL_RANK.
"""

from __future__ import annotations

import os
from typing import Any

# Set by llmops in every process it starts as a rank (or exports as one under submitit), naming
# who started it; a rank with this set never launches again.
LAUNCHER_ENV = "LLMOPS_LAUNCHER"


def world_size(dist: dict[str, Any] | None) -> int:
    """Returns the number of training processes of the compiled `distributed` params (absent,
    None, for one process: distributed=none)."""
    return int(dist["world_size"]) if dist else 1


def rank() -> int:
    """Returns this process's global rank (0 when it is not one of several)."""
    return int(os.environ.get("RANK", "0"))


def current_world() -> int:
    """Returns the world size the launcher set for this process (1 outside a launched job)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_rank() -> bool:
    """Tells whether this process writes reports, artifacts and logs: rank 0, or the only one."""
    return rank() == 0


def launched() -> bool:
    """Tells whether this process is a rank llmops launched (or exported, under submitit)."""
    return bool(os.environ.get(LAUNCHER_ENV))


def report_fields(dist: dict[str, Any] | None, trainer: Any) -> dict[str, Any]:
    """Returns what a training report says about the processes that trained.

    Args:
        dist: The compiled `distributed` params.
        trainer: The transformers Trainer (its args' world_size and its accelerator's sharding
            are what really ran).
    """
    args = trainer.args  # batch_size / grad_accum are per rank: the planner divided them
    sharded = ("fsdp" if getattr(trainer, "is_fsdp_enabled", False)
               else "deepspeed" if getattr(trainer, "is_deepspeed_enabled", False) else None)
    world = int(getattr(args, "world_size", 1) or 1)
    per_rank = int(args.per_device_train_batch_size)
    accum = int(args.gradient_accumulation_steps)
    return {
        "world_size": world,
        "strategy": dist["strategy"] if dist else "none",
        "launcher": os.environ.get(LAUNCHER_ENV) or "none",
        "per_rank_batch": per_rank,
        "grad_accum": accum,
        "effective_batch": per_rank * accum * world,
        "sharded_by": sharded,
    }


def trainer_args(dist: dict[str, Any] | None) -> dict[str, Any]:
    """Returns the TrainingArguments keys that depend on the process group (none for one process).

    The collective backend is the resolved `distributed.backend` (gloo on a CPU, nccl on GPUs).
    FSDP and DeepSpeed come from the accelerate config the launcher was started with.
    """
    if not dist or not launched():
        return {}
    return {"ddp_backend": str(dist["backend"]), "ddp_find_unused_parameters": False}
