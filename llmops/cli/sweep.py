"""Sweeps: expands a multirun into its points for the pre-flight, records each job's outcome,
and sums a finished sweep up (so one failing point neither stops the others nor goes unnoticed).

A sweep comes from `-m` with comma lists on the command line, from a named sweep (`sweeps=NAME`,
whose file sets `hydra.mode: MULTIRUN` and `hydra.sweeper.params`), or both; command-line values
win over the sweep file's for the same key, as in Hydra's basic sweeper.
"""

from __future__ import annotations

import itertools
import json
import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmops.errors import EXIT_GATE_FAILED, EXIT_NO_GO, EXIT_OK, EXIT_STAGE_FAILED
from llmops.tracking.jobs import multirun_job

JOB_FILE = "sweep_job.json"
METRIC = "exact_match"  # of the tuned model: what a job returns to the sweeper
_FAILED = {"failed": EXIT_STAGE_FAILED, "gate_failed": EXIT_GATE_FAILED, "no_go": EXIT_NO_GO}


@dataclass
class Sweep:
    """What a multirun command will launch, as the pre-flight sees it.

    Attributes:
        points: The override list of every point (Hydra basic sweeper order; for Optuna, the
            choice values crossed with each interval's two ends).
        base: The command-line overrides (a point's label is what it adds to these).
        sweep_dir: Hydra's sweep folder, resolved once so every job and the summary agree.
        skip_invalid: The `skip_invalid` key: launch valid points, list invalid ones.
        invalid: The labels of the points the pre-flight found invalid (and left to skip).
    """

    points: list[list[str]]
    base: list[str]
    sweep_dir: str | None = None
    skip_invalid: bool = False
    invalid: list[str] = field(default_factory=list)

    def label(self, point: Sequence[str]) -> str:
        """Returns what a point adds to the command line, e.g. 'lora=r8 train.epochs=2'."""
        return " ".join(o for o in point if o not in self.base) or "base"


def _values(ov: Any) -> list[str]:
    """Returns the values to check for one sweep override (ranges and intervals: both ends)."""
    try:
        return [str(v) for v in ov.sweep_string_iterator()]
    except Exception:  # interval() has no finite list of values: check its two ends
        value = ov.value()
        ends = [getattr(value, "start", None), getattr(value, "end", None)]
        return [str(v) for v in ends if v is not None]


def expand_points(overrides: Sequence[str]) -> list[list[str]]:
    """Returns the override list of every point of a grid sweep (Hydra basic sweeper order).

    A later override of the same key replaces an earlier one (the command line over the sweep
    file). Sweeps Hydra cannot enumerate (Optuna's interval) are checked at both ends.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    axes: dict[str, list[str]] = {}
    for ov in parser.parse_overrides(list(overrides)):
        key = ov.get_key_element()
        if ov.is_sweep_override():
            axes[key] = [f"{key}={v}" for v in _values(ov)]
        else:
            axes[key] = [ov.input_line]
    return [list(p) for p in itertools.product(*axes.values())]


def plan_sweep(overrides: list[str], multirun_flag: bool, source: Any = None) -> Sweep | None:
    """Reads the sweep a command line launches, or returns None when it is a single run.

    `source` is where the configs come from (llmops.config.hydra.source.Source; default: llmops's).

    Raises:
        ConfigError: The fixed (non-swept) overrides do not compose.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from llmops.config.hydra.compose import compose
    from llmops.config.hydra.source import DEFAULT
    from llmops.errors import ConfigError, Problem

    source = source or DEFAULT
    parser = OverridesParser.create()
    fixed, sweeps, bad = [], [], False
    for line in overrides:
        try:
            ov = parser.parse_overrides([line])[0]
        except Exception:  # compose() below reports it with the others
            fixed.append(line)
            bad = True
            continue
        (sweeps if ov.is_sweep_override() else fixed).append(ov)
    fixed = [ov if isinstance(ov, str) else ov.input_line for ov in fixed]
    if bad:
        compose(fixed, source=source)
    cfg = compose(fixed, return_hydra_config=True, source=source)
    hydra = cfg.hydra
    if not (multirun_flag or str(hydra.mode).endswith("MULTIRUN")):
        if sweeps:
            raise ConfigError([Problem(
                ov.get_key_element(), f"'{ov.input_line.split('=', 1)[-1]}' is a sweep (several "
                "values): add -m to run every point, or give one value.") for ov in sweeps])
        return None
    node = hydra.sweeper.get("params")
    params = OmegaConf.to_container(node, resolve=True) if node else {}
    sweep_dir = None
    try:
        sweep_dir = os.path.abspath(str(hydra.sweep.dir))
    except Exception:  # an interpolation only Hydra's launcher can resolve: leave it to Hydra
        sweep_dir = None
    points = expand_points([*(f"{k}={v}" for k, v in params.items()), *overrides])
    return Sweep(points, list(overrides), sweep_dir, bool(cfg.get("skip_invalid", False)))


def pin_override(sweep_dir: str) -> str:
    """Returns `hydra.sweep.dir='...'`, quoted for Hydra's override grammar."""
    quoted = sweep_dir.replace("\\", "\\\\").replace("'", "\\'")
    return f"hydra.sweep.dir='{quoted}'"


# ---- inside a job ----


def job_context() -> dict[str, Any] | None:
    """Returns {sweep, sweep_dir, job_num} when running as a job of a multirun, else None.

    `sweep` (the sweep id) is the sweep folder's last two parts, e.g. '2026-11-23/10-38-00'.
    """
    job = multirun_job()
    if job is None:
        return None
    folder, num = job
    return {"sweep": f"{folder.parent.name}/{folder.name}", "sweep_dir": str(folder),
            "job_num": num}


def as_metric(value: Any) -> float | None:
    """Returns value as the finite float a sweeper can optimise, or None (missing, NaN, text)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def job_metric(eval_report: Any) -> float | None:
    """Returns the metric a job hands the sweeper: the tuned exact match, or None without one.

    Args:
        eval_report: The run's eval_report.json as read (None or {} when there is none).
    """
    tuned = eval_report.get("tuned") if isinstance(eval_report, dict) else None
    return as_metric(tuned.get(METRIC)) if isinstance(tuned, dict) else None


def record_job(run_dir: Path, status: str, metric: Any = None, **fields: Any) -> None:
    """Writes the job's outcome (sweep_job.json) into its run folder (metric: a float or null)."""
    from llmops.files import write_json

    write_json(Path(run_dir) / JOB_FILE,
                      {"status": status, "metric": as_metric(metric), **fields})


# ---- after the sweep ----


def summarize(sweep_dir: Path) -> tuple[int, list[dict[str, Any]]]:
    """Reads every job's outcome in a sweep folder; returns (exit code, one row per job).

    A job folder (one holding Hydra's .hydra/) without sweep_job.json died without reporting
    (killed): it counts as failed. Invalid points skipped on purpose (skip_invalid) do not.
    """
    rows = []
    for hydra_dir in sorted(Path(sweep_dir).glob("**/.hydra")):
        job_dir = hydra_dir.parent
        try:
            row = json.loads((job_dir / JOB_FILE).read_text())
        except (OSError, ValueError):
            row = {"status": "failed", "error": "the job ended without reporting (killed?)"}
        if not isinstance(row, dict) or not isinstance(row.get("status"), str):
            row = {"status": "failed", "error": f"its {JOB_FILE} holds no status"}
        rows.append({"dir": str(job_dir), **row})
    rows.sort(key=lambda r: (r.get("job_num") is None, r.get("job_num") or 0, r["dir"]))
    codes = {_FAILED[r["status"]] for r in rows if r["status"] in _FAILED}
    if not codes:
        return EXIT_OK, rows
    return (EXIT_STAGE_FAILED if EXIT_STAGE_FAILED in codes or len(codes) > 1
            else codes.pop()), rows


def swept(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Returns each job's swept overrides (the keys whose value differs between jobs)."""
    from llmops.tracking.jobs import override_key, override_params, varying_keys

    keys = set(varying_keys([override_params(r.get("overrides") or []) for r in rows]))
    return {r["dir"]: [o for o in r.get("overrides") or [] if override_key(o) in keys]
            for r in rows}


def print_summary(sweep_dir: Path) -> int:
    """Prints every point of a finished sweep (status, metric or error); returns the exit code."""
    import sys

    from llmops.compiler.render import fmt_value

    code, rows = summarize(sweep_dir)
    labels = swept(rows)
    ok = sum(r["status"] in ("succeeded", "dry_run") for r in rows)
    skipped = sum(r["status"] == "invalid" for r in rows)
    lines = [f"sweep finished: {ok} of {len(rows)} points succeeded"
             f"{f', {skipped} skipped as invalid' if skipped else ''} ({sweep_dir})"]
    for r in rows:
        what = " ".join(labels[r["dir"]]) or Path(r["dir"]).name
        line = f"  - job {r.get('job_num', '?')} [{what}]: {r['status']}"
        if r["status"] == "succeeded":
            line += f", {METRIC} {fmt_value(as_metric(r.get('metric')))}"
        elif r["status"] != "dry_run":
            error = str(r.get("error") or "").strip().splitlines()
            line += (": " + error[0]) if error else ""
        lines.append(line)
    print("\n".join(lines), file=sys.stderr if code else sys.stdout)
    return code
