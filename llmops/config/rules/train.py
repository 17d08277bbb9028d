"""Cross-field rules of the train group: the optimizer, the backend and the precision."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmops.config.schema import AppConfig
from llmops.env import Environment
from llmops.errors import Problem

if TYPE_CHECKING:
    from llmops.config.resolve import Resolved


def optimizer_problems(cfg: AppConfig, env: Environment) -> list[Problem]:
    """Returns the problem of an 8-bit optimizer without bitsandbytes."""
    if "8bit" in cfg.train.optimizer and not env.has("bitsandbytes"):
        return [Problem(
            "train.optimizer",
            f"'{cfg.train.optimizer}' needs bitsandbytes. pip install 'llmops[quant]', "
            "or use train.optimizer=adamw_torch.",
        )]
    return []


def backend_problems(cfg: AppConfig, env: Environment) -> list[Problem]:
    """Returns the problem of train.backend=unsloth where it cannot run."""
    if cfg.train.backend != "unsloth" or cfg.train.method == "none":
        return []
    planning_gpu = cfg.dry_run and cfg.hardware.device == "cuda"
    if planning_gpu:
        return []
    missing = []
    if not env.cuda:
        missing.append("no CUDA GPU was found")
    if not env.has("unsloth"):
        missing.append("unsloth is not installed")
    if not missing:
        return []
    return [Problem(
        "train.backend",
        f"'unsloth' needs a CUDA GPU and pip install 'llmops[unsloth]' ({'; '.join(missing)}). "
        "Use train.backend=hf, or auto to pick unsloth only where it works.",
    )]


def precision_problems(cfg: AppConfig, resolved: Resolved) -> list[Problem]:
    """Returns the problem of a train.precision the resolved device cannot train in."""
    p, hw = cfg.train.precision, resolved.hardware
    if p == "fp16" and resolved.device == "cpu":
        return [Problem("train.precision", "'fp16' training needs a GPU. Use train.precision=auto "
                                           "(fp32 on a CPU) or bf16.")]
    if p == "bf16" and resolved.device == "cuda" and hw["bf16"] is False:
        return [Problem("train.precision", f"'bf16' is not supported on {hw['gpu_name']}. "
                                           "Use train.precision=fp16 or auto.")]
    return []
