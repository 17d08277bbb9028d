"""The compute feasibility rule: a GPU plan that does not fit fails at compile time, with fixes.

Pure: called from the config rules with the config's `Resolved` (hardware, precision, batch), the
same one compile_plan receives; imports no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmops.errors import Problem
from llmops.planning.fixes import suggest_fixes
from llmops.planning.memory import estimate
from llmops.planning.sharding import PART_ORDER

if TYPE_CHECKING:
    from llmops.config.schema import AppConfig
    from llmops.planning.resolve import Resolved


def breakdown(parts_gb: dict[str, float]) -> str:
    """Renders the parts as 'weights 16.1, gradients 16.1, ...' (non-zero parts only)."""
    return ", ".join(f"{k} {parts_gb[k]:.1f}" for k in PART_ORDER if parts_gb.get(k, 0) >= 0.05)


def compute_problems(cfg: AppConfig, resolved: Resolved) -> list[Problem]:
    """Returns one 'hardware' problem when a training plan for a GPU does not fit its memory.

    Args:
        cfg: The validated AppConfig.
        resolved: Its resolution (``llmops.planning.resolve``): hardware, precision, batch.

    Returns:
        [] when nothing trains, the plan is for a CPU (estimated, never blocked), or it fits;
        else one Problem naming the estimate by part and the fixes that fit, each with its own
        estimate.
    """
    hw = dict(resolved.hardware)
    if cfg.train.method == "none" or resolved.device != "cuda" or not hw.get("gpu_memory_gb"):
        return []
    model, lora, quant, train = resolved.planner_inputs(cfg)
    dist = resolved.planner_distributed
    est = estimate(model, lora, quant, train, hw, distributed=dist)
    if est["fits"]:
        return []
    fixes = suggest_fixes(model, lora, quant, train, hw, distributed=dist)
    good = [f for f in fixes if f["fits"]][:4]
    gpu = hw.get("gpu_name") or hw.get("name")
    what = "full fine-tune" if lora is None else f"LoRA r{lora['r']}"
    if quant.get("type", "none") != "none":
        what += f" on {quant['type']}"
    if dist:
        what += f", {dist['name']} x {dist['world_size']}"
    per = " per GPU" if dist else ""
    msg = (f"{cfg.model.name} ({what}, batch {train['batch_size']} x {train['max_length']} "
           f"tokens) needs ~{est['total_gb']:.1f} GB{per} on {hw.get('name')} ({gpu}, "
           f"{hw['gpu_memory_gb']:g} GB, ~{est['usable_gb']:.1f} usable): "
           f"{breakdown(est['parts_gb'])}.")
    if good:
        msg += " Fixes that fit: " + "; ".join(_fix_text(f) for f in good) + "."
    else:
        msg += " No single fix fits; use a larger GPU profile (e.g. hardware=a100_80g)."
    return [Problem("hardware", msg)]


def _fix_text(fix: dict) -> str:
    """Renders one fix: its override and estimate (per GPU, for a sharded fix)."""
    if fix.get("gpus"):
        return (f"{fix['override']} (use distributed=fsdp on {fix['gpus']} GPUs: "
                f"~{fix['total_gb']:.1f} GB per GPU)")
    return f"{fix['override']} (~{fix['total_gb']:.1f} GB)"
