"""Stage `compute`: the pre-flight memory, time and cost plan of the training step, and the memory
plan of every stage that loads a model.

Pure arithmetic (llmops.planning); writes compute_plan.json. The compiler already refused plans
with a stage that does not fit (llmops.config.rules.compute), so here the estimate is recorded,
never enforced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmops.compiler.builders.compute import ComputeParams
from llmops.config.hydra.groups import option_files
from llmops.config.rules.compute import plan_stages
from llmops.core.context import StageContext
from llmops.core.plan import report_name
from llmops.files import write_json
from llmops.planning.fixes import scale_out, suggest_fixes
from llmops.planning.memory import estimate
from llmops.planning.stage_fixes import stage_fixes

REPORT_NAME = report_name("compute")


def plan(params: dict[str, Any]) -> dict[str, Any]:
    """Builds the compute plan (estimate + fixes) from the stage params, without writing it.

    Args:
        params: {"model": architecture facts (ModelConfig fields), "facts_from" (only when
            facts were read from the model's config.json): where each came from,
            "lora": dict | None,
            "quant": dict, "train": dict (resolved backend/precision), "hardware": the resolved
            profile, "data": {"n_train_rows": int | None, "avg_tokens": int | None},
            "distributed": the resolved group, only when not none,
            "stages": what the model-loading stages were configured with
            (``llmops.config.resolve.stage_inputs``)}.

    Returns:
        The training estimate (``memory.estimate``; its keys unchanged) plus "stages" (each
        planned stage's device_gb, host_gb, parts_gb, on, fits), "largest_stage", "stages_fit",
        "stage_fixes" (per stage that does not fit) and "capacity_from".
    """
    if "openai" in params:
        return api_plan(params["openai"], params["hardware"])
    data = params.get("data") or {}
    args = (params["model"], params.get("lora"), params.get("quant") or {"type": "none"},
            params["train"], params["hardware"])
    dist = params.get("distributed")  # present only when distributed is not none
    report = estimate(*args, n_train_rows=data.get("n_train_rows"),
                      avg_tokens=data.get("avg_tokens"), distributed=dist)
    report["model"] = params["model"].get("name")
    sources = params.get("facts_from") or {}
    report["facts_read"] = {key: {"value": params["model"][key], "from": where}
                            for key, where in sources.items()}
    report["hardware"] = params["hardware"].get("name")
    report["distributed"] = dist["name"] if dist else "none"
    catalog = option_files()  # the option files the fixes name, read when a fix needs them
    report["fixes"] = [] if report["fits"] else suggest_fixes(*args, distributed=dist,
                                                              catalog=catalog)
    # A one-process GPU plan also shows what the multi-GPU profiles of its GPU would give.
    report["scale_out"] = [] if dist else scale_out(
        *args, n_train_rows=data.get("n_train_rows"), avg_tokens=data.get("avg_tokens"),
        catalog=catalog)
    inputs = params["stages"]
    per = plan_stages(*args, inputs, dist)
    report["stages"] = per["stages"]
    report["largest_stage"] = per["largest"]
    report["stages_fit"] = per["fits"]
    report["usable_host_gb"] = per["usable_host_gb"]
    report["stage_fixes"] = {s: stage_fixes(s, *args, inputs, dist, catalog=catalog)
                             for s in per["over"]}
    report["capacity_from"] = params["hardware"].get("memory_source", "physical RAM") \
        if params["hardware"].get("device") != "cuda" else "hardware profile (gpu_memory_gb)"
    return report


def api_plan(api: dict[str, Any], hardware: dict[str, Any]) -> dict[str, Any]:
    """Returns the compute plan of train.backend=openai: the job's cost and time from the upload
    estimate, against the cost cap (no memory: OpenAI trains and serves the model)."""
    from llmops.planning.openai_ft import job_hours

    up = api["upload"]
    tokens = up.get("train_tokens")
    hours = job_hours(tokens, up["epochs"], api["api_seconds_per_1k_tokens"],
                      api["queue_minutes"]) if tokens is not None else None
    return {"backend": "openai", "model": api["model"], "hardware": hardware.get("name"),
            "upload": up, "cost_usd": up.get("cost_usd"), "max_cost_usd": api["max_cost_usd"],
            "within_cap": up.get("cost_usd") is None or up["cost_usd"] <= api["max_cost_usd"],
            "price_per_1m_training_tokens_usd": api["price_per_1m_training_tokens_usd"],
            "run_time_h": hours, "time_from": f"{api['queue_minutes']:g} min queue + "
                                                f"{api['api_seconds_per_1k_tokens']:g} s per 1k "
                                                "trained tokens (planning figures)",
            "fits": True, "stages": {}, "stages_fit": True}


def run(params: ComputeParams, inputs: dict[str, Path], out_dir: Path,
        ctx: StageContext) -> dict[str, Any]:
    """Estimates peak memory by part, fit, batch advice, step/run time and cost.

    Args:
        params: See ``plan``.
        inputs: None needed.
        out_dir: The stage's output folder; receives compute_plan.json.
        ctx: Run context (logger).

    Returns:
        The compute plan, as written to compute_plan.json.
    """
    report = plan(params)
    if report.get("backend") == "openai":
        if report["cost_usd"] is None:  # files and hub data: counted by the data stage
            ctx.logger.info("compute: OpenAI fine-tuning of %s: cost and time known once the data "
                            "stage has run (%s); the sft stage checks the %s USD cap before it "
                            "uploads anything", report["model"], report["upload"]["rows_from"],
                            report["max_cost_usd"])
        else:
            ctx.logger.info("compute: OpenAI fine-tuning of %s: ~%.2f USD (cap %s), ~%.2f h (%s)",
                            report["model"], report["cost_usd"], report["max_cost_usd"],
                            report["run_time_h"], report["upload"]["token_count"])
        write_json(Path(out_dir) / REPORT_NAME, report)
        return report
    ctx.logger.info(
        "compute: %s on %s needs ~%.1f GB of %s GB (%s); ~%.2f s/step, run %s h, cost %s USD",
        report["model"], report["hardware"], report["total_gb"], report["capacity_gb"],
        "fits" if report["fits"] else "does NOT fit", report["step_time_s"],
        report["run_time_h"], report["cost_usd"],
    )
    write_json(Path(out_dir) / REPORT_NAME, report)
    return report
