"""The W&B sink for tracking=wandb: one W&B run per job, grouped by sweep.

The run gets `group` = tracking.group or the sweep (the multirun folder), `job_type` = "pipeline",
a name made of the job's overrides ("lora=r8,train.learning_rate=1e-4"), tags for model, lora and
quant plus tracking.tags, and the resolved config, nested as llmops composes it (W&B's runs table
and API already read nested keys flat: `config.lora.r`, so no second flat copy is logged), plus
`llmops.*` (overrides, swept keys, reproduce command). Training curves come from
training_report.json and eval metrics from eval_report.json, so a stage reused from the store is
logged as fully as one that ran. Offline (files under RUN_DIR/wandb/, `wandb sync` them later)
when tracking.mode=auto and no API key is configured. The key is never read into llmops.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from llmops.core.plan import AFTER_SFT_STAGES, Plan, StageSpec, report_name
from llmops.errors import StageError
from llmops.tracking.jobs import (
    is_noise,
    override_params,
    reproduce_command,
    sweep_group,
    sweep_info,
    swept_keys,
)

log = logging.getLogger("llmops")

INSTALL_HINT = "pip install 'llmops[tracking]' (or pip install wandb), or use tracking=none"
SAVED_FILES = ("metrics.json", report_name("eval"), report_name("sft"), "manifest.json")


def has_credentials() -> bool:
    """Tells whether W&B credentials are configured (env, settings file or netrc).

    Asks wandb itself (`wandb.login(verify=False, prompt=False)`): it never prompts, never
    contacts the server, and llmops never sees the key.
    """
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    import wandb

    try:
        return bool(wandb.login(verify=False, prompt=False))
    except Exception as exc:  # a malformed key in a netrc or settings file
        log.warning("tracking: W&B credentials look invalid (%s); logging offline.",
                    type(exc).__name__)
        return False


def resolve_mode(mode: str) -> tuple[str, str]:
    """Returns (W&B mode, why) for tracking.mode: auto goes online only with credentials."""
    if mode != "auto":
        return mode, f"tracking.mode={mode}"
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env in ("offline", "dryrun"):
        return "offline", f"WANDB_MODE={env}"
    if env == "disabled":
        return "disabled", "WANDB_MODE=disabled"
    if env in ("online", "run"):
        return "online", f"WANDB_MODE={env}"
    if has_credentials():
        return "online", "W&B credentials are configured"
    return "offline", "no W&B API key is configured (WANDB_API_KEY or `wandb login`)"


def run_name(overrides: list[str], swept: list[str] | None = None) -> str:
    """Names a run by its swept values ('lora=r8,train.learning_rate=1e-4'), or by all of its
    overrides outside a sweep."""
    params = {k: v for k, v in override_params(overrides).items() if not is_noise(k)}
    parts = [f"{k}={v}" for k, v in params.items() if not swept or k in swept]
    return (",".join(parts) or "default")[:128]


def run_tags(config: dict[str, Any]) -> list[str]:
    """Returns W&B tags: model=, lora=, quant= plus tracking.tags (each at most 64 chars)."""
    lora = config.get("lora") or {}
    tags = [f"model={config['model']['name']}",
            f"lora=r{lora['r']}" if lora.get("enabled", True) and lora.get("r") else "lora=none",
            f"quant={config['quant']['type']}",
            *[str(t) for t in (config.get("tracking") or {}).get("tags") or []]]
    return list(dict.fromkeys(t[:64] for t in tags))


def _flat_scalars(prefix: str, metrics: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (metrics or {}).items():
        if isinstance(v, dict):
            out.update(_flat_scalars(f"{prefix}/{k}", v))
        elif isinstance(v, int | float | bool):
            out[f"{prefix}/{k}"] = v
    return out


class WandbSink:
    """Mirrors one job into one W&B run (see the module docstring)."""

    def __init__(self) -> None:
        self.run: Any = None

    def start(self, plan: Plan, run_dir: Path, manifest: Any) -> None:
        try:
            import wandb
        except ImportError:
            raise StageError(f"tracking=wandb needs wandb, which is not installed. "
                             f"{INSTALL_HINT}.") from None
        t = plan.config["tracking"]
        mode, why = resolve_mode(str(t.get("mode", "auto")))
        self.manifest, self.run_dir = manifest, Path(run_dir)
        if mode == "disabled":
            log.info("tracking: W&B disabled (%s)", why)
            return
        overrides = list(manifest.data.get("overrides") or [])
        sweep = sweep_info(self.run_dir)
        group = t.get("group") or (sweep_group(sweep[0]) if sweep else None)
        swept = swept_keys(sweep[0]) if sweep else []
        config = {**plan.config, "llmops": {
            "overrides": overrides, "params": override_params(overrides),
            "swept": swept, "command": reproduce_command(overrides),
            "run_dir": str(self.run_dir.resolve()), "version": plan.version,
            "sweep_job": sweep[1] if sweep else None,
        }}
        self.run = wandb.init(
            project=t.get("project") or "llmops", entity=t.get("entity"), group=group,
            job_type="pipeline", name=run_name(overrides, swept), tags=run_tags(plan.config),
            config=config, mode=mode, dir=str(self.run_dir), reinit="finish_previous",
            settings=wandb.Settings(console="off", silent=True),
        )
        self.run.define_metric("train/step")
        self.run.define_metric("train/*", step_metric="train/step")
        where = (f" -> {self.run.dir}; upload later with `wandb sync {Path(self.run.dir).parent}`"
                 if mode == "offline" else "")
        log.info("tracking: W&B run %s (%s, %s)%s", self.run.id, mode, why, where)
        manifest.data["tracking"] = {"backend": "wandb", "mode": mode, "project": t.get(
            "project"), "group": group, "run_id": self.run.id, "run_dir": str(
                Path(self.run.dir).parent)}
        manifest.write()

    def log_stage(self, spec: StageSpec, report: dict[str, Any]) -> None:
        if self.run is None:
            return
        stage = self.manifest.data["stages"].get(spec.name, {})
        summary: dict[str, Any] = {f"stages/{spec.name}/status": stage.get("status"),
                                   f"stages/{spec.name}/duration_s": stage.get("duration_s")}
        if spec.kind == "sft":
            for p in report.get("loss_curve") or []:
                self.run.log({"train/step": p["step"], "train/loss": p["loss"],
                              "train/learning_rate": p.get("learning_rate")})
            for k in ("final_loss", "eval_loss", "train_runtime_s", "tokens_per_s", "steps",
                      "peak_memory_mb", "trainable_params", "resumed_from_step"):
                if report.get(k) is not None:
                    summary[f"train/{k}"] = report[k]
        elif spec.kind in AFTER_SFT_STAGES:
            # dpo, orpo, simpo, kto: held-out pair figures; grpo: held-out prompts' rewards and
            # its per-step curves (reward per reward function, KL, completion length)
            held = report.get("held_out") or {}
            curve = report.get("loss_curve") if spec.kind == "grpo" else None
            for p in curve or []:
                self.run.log({"grpo/step": p["step"], **{
                    f"grpo/{k}": v for k, v in p.items() if k != "step"}})
            for who in (held.get("start"), spec.kind):
                if who:
                    summary.update(_flat_scalars(f"{spec.kind}/held_out/{who}", held.get(who)))
            for k in ("final_loss", "train_runtime_s", "steps", "peak_memory_mb"):
                if report.get(k) is not None:
                    summary[f"{spec.kind}/{k}"] = report[k]
        elif spec.kind == "eval_base":
            summary.update(_flat_scalars("eval/base", report.get("metrics")))
        elif spec.kind == "eval":
            import wandb

            for part in ("base", "tuned", "deltas"):
                summary.update(_flat_scalars(f"eval/{part}", report.get(part)))
            gates = report.get("gates") or []
            for g in gates:
                summary[f"gates/{g.get('name')}/passed"] = g.get("passed")
                summary[f"gates/{g.get('name')}/value"] = g.get("value")
            summary["gates/passed"] = report.get("passed")
            cols = ["name", "metric", "value", "threshold", "direction", "passed"]
            self.run.log({"eval/gates": wandb.Table(
                columns=cols, data=[[g.get(c) for c in cols] for g in gates])})
        self.run.summary.update(summary)

    def finish(self, status: str) -> None:
        if self.run is None:
            return
        counts: dict[str, int] = {}
        for s in self.manifest.data.get("stages", {}).values():
            counts[s.get("status")] = counts.get(s.get("status"), 0) + 1
        self.run.summary.update({"status": status, **{f"stages/{k}": v for k, v in
                                                      counts.items()}})
        for name in SAVED_FILES:  # files in run.dir are uploaded with the run (or by wandb sync)
            if (self.run_dir / name).is_file():
                shutil.copy2(self.run_dir / name, Path(self.run.dir) / name)
        self.run.finish(exit_code=0 if status == "succeeded" else 1)
        self.run = None
