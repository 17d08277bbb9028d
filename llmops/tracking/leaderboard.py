"""A sweep's leaderboard rows: each run folder read into one row, ranked by a metric.

The one home of what compare (the table, CSV and PNG) and the sweep report (llmops.report) read
about the runs of a sweep. A run whose metrics.json, manifest.json or reports cannot be read (not
UTF-8, not strict JSON, nested deeper than limits.json_depth, not the shape llmops writes) raises
Unreadable; find_runs skips it with one line on stderr naming the file and why.
"""

from __future__ import annotations

import math
import os
import re
import sys
from pathlib import Path
from typing import Any

from llmops.core.plan import report_name
from llmops.tracking.jobs import (
    is_noise,
    override_params,
    reproduce_command,
    swept_keys,
    varying_keys,
)
from llmops.tracking.metrics import METRICS_FILE

LOWER_IS_BETTER = ("loss", "seconds", "false_refusal", "runtime")
SKIP_DIRS = {"stages", "wandb", ".hydra", "checkpoints"}


class Unreadable(ValueError):
    """A run's file that compare cannot use (its message names the file and why)."""


def default_json_depth() -> int:
    """Returns limits.json_depth's default (conf/config.yaml, its one home)."""
    from importlib.resources import files

    from omegaconf import OmegaConf

    return int(OmegaConf.load(files("llmops.conf") / "config.yaml").limits.json_depth)


def read_object(path: Path, depth: int) -> dict[str, Any]:
    """Returns a run file's JSON object ({} when the file does not exist).

    Raises:
        Unreadable: Not UTF-8, not strict JSON, nested deeper than depth, or not an object.
    """
    from llmops.files import JSONLimitError, loads_bounded

    if not path.is_file():
        return {}
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise Unreadable(f"{path}: cannot read it ({exc})") from exc
    try:
        data = loads_bounded(text, depth)
    except JSONLimitError as exc:
        raise Unreadable(f"{path}: {exc}") from exc
    except ValueError as exc:
        raise Unreadable(f"{path}: not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise Unreadable(f"{path}: not a JSON object (got {type(data).__name__})")
    return data


def _scalars(prefix: str, metrics: dict[str, Any] | None) -> dict[str, Any]:
    return {f"{prefix}.{k}": v for k, v in (metrics or {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


def _curve(points: list[dict[str, Any]] | None) -> list[tuple[float, float]]:
    return [(p["step"], p["loss"]) for p in points or [] if p.get("loss") is not None]


def row_from_run_dir(run_dir: Path, depth: int | None = None) -> dict[str, Any] | None:
    """Builds one leaderboard row from a run folder: metrics.json, else the stage reports.

    Raises:
        Unreadable: A file of the run cannot be read, or is not the shape llmops writes.
    """
    run_dir = Path(run_dir)
    depth = depth or default_json_depth()
    try:
        return _row(run_dir, depth)
    except (TypeError, AttributeError, KeyError, IndexError) as exc:
        raise Unreadable(f"{run_dir}: its metrics.json or reports are not the shape llmops "
                         f"writes ({type(exc).__name__}: {exc})") from exc


def _finite(value: Any) -> Any:
    """Returns a metric value, or None for one that is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value if value is None or isinstance(value, str) else None
    return value if math.isfinite(value) else None


def _row(run_dir: Path, depth: int) -> dict[str, Any] | None:
    m = read_object(run_dir / METRICS_FILE, depth)
    manifest = read_object(run_dir / "manifest.json", depth)
    if not m and not manifest:
        return None
    overrides = m.get("overrides") or manifest.get("overrides") or []
    if not overrides and (run_dir / ".hydra" / "overrides.yaml").is_file():
        from omegaconf import OmegaConf

        overrides = list(OmegaConf.load(run_dir / ".hydra" / "overrides.yaml"))
    evals = read_object(run_dir / report_name("eval"), depth)
    training = read_object(run_dir / report_name("sft"), depth)
    gates = m.get("gates") or {g["name"]: g for g in evals.get("gates", []) if "name" in g}
    row: dict[str, Any] = {
        "run_dir": str(run_dir.resolve()),
        "status": m.get("status") or manifest.get("status"),
        "params": {k: v for k, v in override_params(overrides).items() if not is_noise(k)},
        "swept": m.get("swept") or swept_keys(run_dir.parent),
        "command": m.get("command") or reproduce_command(overrides),
        "method": m.get("method") or ((manifest.get("config") or {}).get("train") or {}).get(
            "method"),
        "gates_passed": m.get("gates_passed", evals.get("passed")),
        "failed_gates": [n for n, g in gates.items() if g.get("passed") is False],
        "final_loss": _finite(m.get("final_loss", training.get("final_loss"))),
        "eval_loss": _finite(m.get("eval_loss", training.get("eval_loss"))),
        "train_seconds": _finite(m.get("train_seconds", training.get("train_runtime_s"))),
        "steps": _finite(m.get("steps", training.get("steps"))),
        "loss_curve": _curve(training.get("loss_curve")),
    }
    for part in ("tuned", "base", "deltas"):
        row.update(_scalars(part, m.get(part) or evals.get(part)))
    row.update({f"pref.{k}": v for k, v in (m.get("preference") or {}).items()})
    row.update({f"grpo.{k}": v for k, v in (m.get("grpo") or {}).items()})
    return row


def find_runs(root: Path, depth: int | None = None) -> list[dict[str, Any]]:
    """Returns a row for every run folder under root (job folders in numeric order); a run that
    cannot be read is skipped with one line on stderr naming the file and why."""
    rows = []
    depth = depth or default_json_depth()
    for here, dirs, files in os.walk(root):
        dirs[:] = sorted((d for d in dirs if d not in SKIP_DIRS),
                         key=lambda d: (not d.isdigit(), int(d) if d.isdigit() else 0, d))
        if METRICS_FILE in files or "manifest.json" in files:
            try:
                row = row_from_run_dir(Path(here), depth)
            except Unreadable as exc:
                print(f"compare: skipped a run: {exc}", file=sys.stderr)
                dirs[:] = []
                continue
            if row:
                row["run"] = str(Path(here).relative_to(root)) if Path(here) != root else "."
                rows.append(row)
            dirs[:] = []
    return rows


def swept_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Returns the swept keys: those the sweep declares, then any whose value differs by row."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r.get("swept", []) if k not in keys]
    return keys + [k for k in varying_keys([r["params"] for r in rows]) if k not in keys]


def metric_of(row: dict[str, Any], metric: str) -> float | None:
    """Returns row[metric], or the tuned model's metric of that name."""
    value = row.get(metric, row.get(f"tuned.{metric}"))
    return float(value) if isinstance(value, int | float) else None


def lower_is_better(metric: str) -> bool:
    """Tells whether a smaller value of the metric is better (losses, times, false refusals)."""
    return any(word in metric for word in LOWER_IS_BETTER)


def rank(rows: list[dict[str, Any]], metric: str, ascending: bool | None = None) -> list[dict]:
    """Sorts rows best first by metric; rows without it go last."""
    asc = lower_is_better(metric) if ascending is None else ascending
    def key(r: dict[str, Any]) -> tuple[bool, float, float]:
        v, loss = metric_of(r, metric), r.get("final_loss")
        return (v is None, 0.0 if v is None else (v if asc else -v),
                loss if isinstance(loss, int | float) else float("inf"))  # ties: lower loss
    return sorted(rows, key=key)


def label(row: dict[str, Any], swept: list[str]) -> str:
    """Returns a short name for a row: its swept values, or its folder."""
    return ",".join(f"{k}={row['params'].get(k, '-')}" for k in swept) or row["run"]


def natural_key(v: Any) -> tuple:
    try:
        return (0, float(v), "")
    except (TypeError, ValueError):
        return (1, 0.0, [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(v))])
