"""Tracking sinks: every job writes metrics.json into its run folder; W&B is an optional sink.

The runner calls `start_tracking(plan, run_dir, manifest)` once, `log_stage(spec, report)` after
each stage, and the manifest's finish hook calls `finish(status)`. metrics.json is the source of
truth for `python -m llmops.compare`; W&B (tracking=wandb, see llmops/wandb_sink.py) only mirrors
it. Nothing here imports wandb: the compile path must stay light.
"""

from __future__ import annotations

import logging
import shlex
import time
from pathlib import Path
from typing import Any, Protocol

from llmops.compiler.plan import Plan, StageSpec
from llmops.errors import LlmopsError
from llmops.runner.files import write_json_atomic

log = logging.getLogger("llmops")

METRICS_FILE = "metrics.json"
# Override keys that say where or how a job runs, not what it trains: never "swept parameters".
NOISE_KEYS = ("store_dir", "progress", "dry_run", "sweeps", "hydra", "tracking")


class Sink(Protocol):
    """What the runner feeds a tracker."""

    def start(self, plan: Plan, run_dir: Path, manifest: Any) -> None: ...

    def log_stage(self, spec: StageSpec, report: dict[str, Any]) -> None: ...

    def finish(self, status: str) -> None: ...


def override_key(override: str) -> str:
    """Returns the config key of a command-line override ('+lora.r=8' -> 'lora.r')."""
    return override.split("=", 1)[0].lstrip("+~")


def is_noise(key: str) -> bool:
    """Tells whether an override key only says where/how a job runs (store_dir, hydra.*, ...)."""
    return any(key == k or key.startswith(k + ".") or key.startswith(k + "/") for k in NOISE_KEYS)


def override_params(overrides: list[str]) -> dict[str, str]:
    """Maps each `key=value` override to its value, in command-line order."""
    return {override_key(o): o.split("=", 1)[1] for o in overrides if "=" in o}


def reproduce_command(overrides: list[str]) -> str:
    """Returns the command line that reruns exactly this job as a single run.

    A named sweep (`sweeps=X`) stays in the line, for the fixed keys its file sets, with
    `hydra.mode=RUN` so that it runs this one point instead of the whole grid.
    """
    args = [o for o in overrides if not override_key(o).startswith("hydra.mode")]
    if any(override_key(o) == "sweeps" and not o.endswith("=none") for o in args):
        args.append("hydra.mode=RUN")
    return " ".join(["python -m llmops", *(shlex.quote(a) for a in args)])


def sweep_info(run_dir: Path) -> tuple[Path, int | None] | None:
    """Returns (sweep folder, job number) when this job is part of a Hydra multirun, else None.

    Hydra's own answer (``llmops.sweep.multirun_job``) first; else a job folder of a multirun
    folder (its parent holds multirun.yaml), as when a finished sweep's runs are read again.
    """
    from llmops.sweep import multirun_job

    job = multirun_job()
    if job is not None:
        return job
    parent = Path(run_dir).resolve().parent
    if (parent / "multirun.yaml").is_file():
        name = Path(run_dir).name
        return parent, int(name) if name.isdigit() else None
    return None


def sweep_group(sweep_dir: Path) -> str:
    """Names a sweep for grouping: its folder name, with the date folder when that is a time."""
    name = sweep_dir.name
    if len(name) == 8 and name[2] == name[5] == "-":  # Hydra's default HH-MM-SS subfolder
        return f"{sweep_dir.parent.name}_{name}"
    return name


def swept_keys(sweep_dir: Path) -> list[str]:
    """Returns the keys a multirun sweeps over, read from its multirun.yaml (order kept)."""
    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return []
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(path)
        task = list(OmegaConf.select(cfg, "hydra.overrides.task") or [])
        params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
        keys = [ov.get_key_element() for ov in OverridesParser.create().parse_overrides(task)
                if ov.is_sweep_override()]
        keys += [str(k) for k in params]
    except Exception as exc:  # an unreadable multirun.yaml must not fail the job
        log.debug("cannot read swept keys from %s: %s", path, exc)
        return []
    keys = [k.lstrip("+~") for k in keys]
    return [k for i, k in enumerate(keys) if k not in keys[:i] and not is_noise(k)]


def varying_keys(params: list[dict[str, Any]]) -> list[str]:
    """Returns the keys whose value differs between jobs (missing counts as a value), in order.

    Args:
        params: Each job's override params ({key: value}, see override_params).
    """
    keys: list[str] = []
    for p in params:
        keys += [k for k in p if k not in keys]
    return [k for k in keys if len({str(p.get(k)) for p in params}) > 1]


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
        write_json_atomic(self.run_dir / METRICS_FILE, self.data)


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
        from llmops.wandb_sink import WandbSink

        sinks.append(WandbSink())
    tracking = Tracking(sinks)
    tracking.start(plan, run_dir, manifest)
    manifest.on_finish.append(tracking.finish)
    return tracking
