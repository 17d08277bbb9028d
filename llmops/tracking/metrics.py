"""Tracking sinks: every job writes metrics.json into its run folder; W&B is an optional sink.

The runner calls `start_tracking(plan, run_dir, manifest)` once, `log_stage(spec, report)` after
each stage, and the manifest's finish hook calls `finish(status)`. metrics.json is the source of
truth for `python -m llmops.compare`; W&B (tracking=wandb, see wandb_sink.py) only mirrors
it. Nothing here imports wandb: the compile path must stay light.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Protocol

from llmops.core.plan import PREFERENCE_STAGES, Plan, StageSpec
from llmops.errors import LlmopsError
from llmops.files import write_json
from llmops.tracking.jobs import (
    is_noise,
    override_params,
    reproduce_command,
    sweep_group,
    sweep_info,
    swept_keys,
)

log = logging.getLogger("llmops")

METRICS_FILE = "metrics.json"


class Sink(Protocol):
    """What the runner feeds a tracker."""

    def start(self, plan: Plan, run_dir: Path, manifest: Any) -> None: ...

    def log_stage(self, spec: StageSpec, report: dict[str, Any]) -> None: ...

    def finish(self, status: str) -> None: ...


def _scalars(metrics: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (metrics or {}).items() if isinstance(v, int | float | bool)}


class MetricsSink:
    """Writes metrics.json (overrides, swept params, base/tuned metrics, gates, loss, timings)."""

    def start(self, plan: Plan, run_dir: Path, manifest: Any) -> None:
        self.run_dir, self.manifest = Path(run_dir), manifest
        cfg = plan.config
        overrides = list(manifest.data.get("overrides") or [])
        sweep = sweep_info(self.run_dir)
        params = {k: v for k, v in override_params(overrides).items() if not is_noise(k)}
        self.data: dict[str, Any] = {
            "llmops_version": plan.version,
            "status": "running",
            "run_dir": str(self.run_dir.resolve()),
            "overrides": overrides,
            "params": params,
            "swept": swept_keys(sweep[0]) if sweep else [],
            "command": reproduce_command(overrides),
            "sweep": ({"dir": str(sweep[0]), "job": sweep[1], "group": sweep_group(sweep[0])}
                      if sweep else None),
            "model": cfg["model"]["name"],
            "lora_r": cfg["lora"]["r"] if cfg["lora"].get("enabled", True) else None,
            "quant": cfg["quant"]["type"],
            "learning_rate": cfg["train"].get("learning_rate"),
            "method": cfg["train"].get("method"),
            "base": {}, "tuned": {}, "deltas": {}, "gates": {}, "gates_passed": None,
            "final_loss": None, "train_seconds": None, "steps": None,
            "loss_curve": None, "loss_curve_png": None,
        }
        self._write()

    def log_stage(self, spec: StageSpec, report: dict[str, Any]) -> None:
        d = self.data
        if spec.kind == "sft":
            d.update(final_loss=report.get("final_loss"), train_seconds=report.get(
                "train_runtime_s"), steps=report.get("steps"), eval_loss=report.get("eval_loss"))
            if report.get("loss_curve"):
                d["loss_curve"] = spec.report
            if (self.run_dir / "loss_curve.png").is_file():
                d["loss_curve_png"] = "loss_curve.png"
        elif spec.kind in PREFERENCE_STAGES and isinstance(report.get("held_out"), dict):
            held = report["held_out"]  # held-out pairs: the starting model's and the trained one's
            start, end = held.get(held.get("start")) or {}, held.get(spec.kind) or {}
            d["preference"] = {f"{who}.{k}": v for who, m in (("start", start), ("tuned", end))
                               for k, v in m.items()
                               if k in ("logp_accuracy", "logp_margin", "rewards/margins")}
        elif spec.kind == "grpo" and isinstance(report.get("held_out"), dict):
            held = report["held_out"]  # held-out prompts: the SFT model's and GRPO's rewards
            d["grpo"] = {f"{who}.{k}": m[k] for who, m in (("start", held.get("sft") or {}),
                                                          ("tuned", held.get("grpo") or {}))
                         for k in ("mean_reward", "parse_rate") if m.get(k) is not None}
        elif spec.kind == "eval_base" and not d["base"]:
            d["base"] = _scalars(report.get("metrics"))
        elif spec.kind == "eval":
            d.update(base=_scalars(report.get("base")), tuned=_scalars(report.get("tuned")),
                     deltas=_scalars(report.get("deltas")), gates_passed=report.get("passed"))
            d["gates"] = {g["name"]: {k: g.get(k) for k in ("metric", "value", "threshold",
                                                            "passed", "skipped")}
                          for g in report.get("gates", []) if "name" in g}
        self._write()

    def finish(self, status: str) -> None:
        stages = {n: s.get("status") for n, s in self.manifest.data.get("stages", {}).items()}
        counts: dict[str, int] = {}
        for s in stages.values():
            counts[s] = counts.get(s, 0) + 1
        self.data.update(status=status, stages=stages, stage_counts=counts,
                         duration_s=self.manifest.data.get("duration_s"),
                         tracking=self.manifest.data.get("tracking"),
                         finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        self._write()

    def _write(self) -> None:
        write_json(self.run_dir / METRICS_FILE, self.data)


class Tracking:
    """Fans the runner's events out to the sinks. A remote sink's failure is a warning, never
    a failed run: metrics.json is already written."""

    def __init__(self, sinks: list[Any]):
        self.sinks = sinks
        self.finished = False

    def _each(self, method: str, *args: Any) -> None:
        for sink in list(self.sinks):
            try:
                getattr(sink, method)(*args)
            except Exception as exc:
                if isinstance(sink, MetricsSink) or isinstance(exc, LlmopsError):
                    raise
                self.sinks.remove(sink)  # one warning, not one per stage
                log.warning("tracking: %s.%s failed (%s: %s); the run goes on, metrics.json "
                            "in the run folder has everything.", type(sink).__name__, method,
                            type(exc).__name__, exc)

    def start(self, plan: Plan, run_dir: Path, manifest: Any) -> None:
        self._each("start", plan, Path(run_dir), manifest)

    def log_stage(self, spec: StageSpec, report: dict[str, Any]) -> None:
        self._each("log_stage", spec, report)

    def finish(self, status: str) -> None:
        if not self.finished:
            self.finished = True
            self._each("finish", status)


def start_tracking(plan: Plan, run_dir: Path, manifest: Any) -> Tracking:
    """Starts metrics.json and, for tracking=wandb, a W&B run; hooks finish() to the manifest."""
    sinks: list[Any] = [MetricsSink()]
    if (plan.config.get("tracking") or {}).get("backend") == "wandb":
        from llmops.tracking.wandb_sink import WandbSink

        sinks.append(WandbSink())
    tracking = Tracking(sinks)
    tracking.start(plan, run_dir, manifest)
    manifest.on_finish.append(tracking.finish)
    return tracking
