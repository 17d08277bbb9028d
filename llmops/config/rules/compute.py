"""The compute feasibility rule: a plan with a stage that does not fit fails at compile time, with
the fixes of that stage's knobs; on a GPU profile against its GPU, on a CPU against this machine.

Pure: called from the config rules with the config's `Resolved` (hardware, precision, batch), the
same one compile_plan receives; imports no torch. The arithmetic is llmops.planning's; this module
hands it the config as plain values, and the option files its fixes name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmops.config.hydra.groups import option_files
from llmops.config.resolve import stage_inputs
from llmops.errors import Problem
from llmops.planning.fixes import suggest_fixes
from llmops.planning.memory import estimate
from llmops.planning.sharding import PART_ORDER
from llmops.planning.stage_fixes import stage_fixes
from llmops.planning.stage_memory import fitting, stage_memory

if TYPE_CHECKING:
    from llmops.config.resolve import Resolved
    from llmops.config.schema import AppConfig


def breakdown(parts_gb: dict[str, float]) -> str:
    """Renders the parts as 'weights 16.1, gradients 16.1, ...' (non-zero parts only)."""
    order = [*PART_ORDER, *(k for k in parts_gb if k not in PART_ORDER)]
    return ", ".join(f"{k} {parts_gb[k]:.1f}" for k in order if parts_gb.get(k, 0) >= 0.05)


def plan_stages(model: dict, lora: dict | None, quant: dict, train: dict, hardware: dict,
                inputs: dict[str, Any], distributed: dict | None = None) -> dict[str, Any]:
    """Returns the per-stage memory plan: {"stages": {stage: {device_gb, host_gb, parts_gb, on,
    fits}}, "largest", "fits", "over", "usable_device_gb", "usable_host_gb"}."""
    stages = stage_memory(model, lora, quant, train, hardware, inputs, distributed)
    return {"stages": stages, **fitting(stages, hardware)}


def compute_problems(cfg: AppConfig, resolved: Resolved) -> list[Problem]:
    """Returns one 'hardware' problem when a stage of the plan does not fit its memory.

    Every stage that loads a model is planned (``llmops.planning.stage_memory``); the largest
    that does not fit is reported with its parts and the fixes of its own knobs. A GPU profile is
    checked against its GPU memory; a CPU plan (and the host of a plan for this machine) against
    the memory this run may use (physical RAM, cgroup, SLURM, divided among the sweep jobs).

    Args:
        cfg: The validated AppConfig.
        resolved: Its resolution (``llmops.config.resolve``): hardware, precision, batch.

    Returns:
        [] when every stage fits (or no capacity is known); else one Problem naming the stage,
        its estimate by part and the fixes that fit, each with its own estimate. [] for
        train.backend=openai: no stage loads the model here (OpenAI trains and serves it).
    """
    if resolved.backend == "openai":
        return []
    hw = dict(resolved.hardware)
    model, lora, quant, train = resolved.planner_inputs(cfg)
    if train.get("batch_size") is None:  # nothing trains: the batch the eval stages see
        train = {**train, "batch_size": 1, "grad_accum": 1}
    dist = resolved.planner_distributed
    inputs = stage_inputs(cfg)
    plan = plan_stages(model, lora, quant, train, hw, inputs, dist)
    if plan["fits"]:
        return []
    stage = plan["over"][0]
    cuda = hw.get("device") == "cuda"
    if stage == "sft":
        est = estimate(model, lora, quant, train, hw, distributed=dist)
        if not est["fits"] or not cuda:
            return [_training_problem(cfg, model, lora, quant, train, hw, dist, est, plan)]
    s = plan["stages"][stage]
    fixes = stage_fixes(stage, model, lora, quant, train, hw, inputs, dist, catalog=option_files())
    good = [f for f in fixes if f["fits"]][:4]
    on_device = cuda and s["on"] == "device"
    gb = s["device_gb"] if on_device else s["host_gb"]
    usable = plan["usable_device_gb"] if on_device else plan["usable_host_gb"]
    msg = (f"stage {stage} of {cfg.model.name} needs ~{gb:.1f} GB {_where(hw, s['on'], usable)}: "
           f"{breakdown(s['parts_gb'])}.")
    others = [o for o in plan["over"][1:]]
    if others:
        msg += f" Also over: {', '.join(others)}."
    if good:
        msg += " Fixes that fit: " + "; ".join(_fix_text(f) for f in good) + "."
    else:
        msg += " No single fix fits; use a larger machine or hardware profile."
    return [Problem("hardware", msg)]


def _where(hw: dict[str, Any], on: str, usable: float) -> str:
    """Renders where a stage's memory sits: the GPU of the profile, or this machine's memory."""
    if hw.get("device") == "cuda" and on == "device":
        return (f"on {hw.get('name')} ({hw.get('gpu_name') or hw.get('name')}, "
                f"{hw['gpu_memory_gb']:g} GB, ~{usable:.1f} usable)")
    src = hw.get("memory_source", "physical RAM")
    return f"of this machine's {hw.get('memory_gb'):g} GB ({src}, ~{usable:.1f} usable)"


def _training_problem(cfg: AppConfig, model: dict, lora: dict | None, quant: dict, train: dict,
                      hw: dict, dist: dict | None, est: dict, plan: dict) -> Problem:
    """Returns the problem of a training step that does not fit, with the training fixes."""
    fixes = suggest_fixes(model, lora, quant, train, hw, distributed=dist, catalog=option_files())
    good = [f for f in fixes if f["fits"]][:4]
    cuda = hw.get("device") == "cuda"
    gpu = hw.get("gpu_name") or hw.get("name")
    what = "full fine-tune" if lora is None else f"LoRA r{lora['r']}"
    if quant.get("type", "none") != "none":
        what += f" on {quant['type']}"
    if dist:
        what += f", {dist['name']} x {dist['world_size']}"
    per = " per GPU" if dist else ""
    on = (f"on {hw.get('name')} ({gpu}, {hw['gpu_memory_gb']:g} GB, "
          f"~{est['usable_gb']:.1f} usable)" if cuda else _where(hw, "host", est["usable_gb"]))
    msg = (f"{cfg.model.name} ({what}, batch {train['batch_size']} x {train['max_length']} "
           f"tokens) needs ~{est['total_gb']:.1f} GB{per} {on}: {breakdown(est['parts_gb'])}.")
    others = [o for o in plan["over"] if o != "sft"]
    if others:
        msg += f" Also over: {', '.join(others)}."
    if good:
        msg += " Fixes that fit: " + "; ".join(_fix_text(f) for f in good) + "."
    else:
        msg += (" No single fix fits; use a larger GPU profile (e.g. hardware=a100_80g)."
                if cuda else " No single fix fits; use a GPU profile (e.g. hardware=a100_80g).")
    return Problem("hardware", msg)


def _fix_text(fix: dict) -> str:
    """Renders one fix: its override and estimate (per GPU, for a sharded fix)."""
    if fix.get("total_gb") == 0.0:
        return f"{fix['override']} (skips the stage)"
    if fix.get("gpus"):
        return (f"{fix['override']} (use distributed=fsdp on {fix['gpus']} GPUs: "
                f"~{fix['total_gb']:.1f} GB per GPU)")
    return f"{fix['override']} (~{fix['total_gb']:.1f} GB)"
