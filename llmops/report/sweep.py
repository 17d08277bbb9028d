"""A sweep's report: the leaderboard rows (llmops.tracking.leaderboard) into the template's context
and charts: the metric against each swept axis, every point's loss curve, each point's status."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmops.report import charts
from llmops.report.run import MAX_TEXT, clip
from llmops.tracking.leaderboard import (
    default_json_depth,
    label,
    lower_is_better,
    metric_of,
    natural_key,
    rank,
    read_object,
    swept_columns,
)

JOB_FILE = "sweep_job.json"


def _job(row: dict[str, Any]) -> dict[str, Any]:
    """Returns the point's sweep_job.json (its status and error), {} when it has none."""
    try:
        return read_object(Path(row["run_dir"]) / JOB_FILE, default_json_depth())
    except (ValueError, OSError):
        return {}


def _axis_chart(rows: list[dict[str, Any]], key: str, swept: list[str],
                metric: str) -> dict[str, Any]:
    xs = sorted({str(r["params"].get(key)) for r in rows}, key=natural_key)
    numeric = all(natural_key(x)[0] == 0 for x in xs)
    series: dict[str, dict[str, float]] = {}
    for r in rows:
        y = metric_of(r, metric)
        if y is None:
            continue
        others = ",".join(f"{k}={r['params'].get(k)}" for k in swept if k != key)
        series.setdefault(others or metric, {})[str(r["params"].get(key))] = y
    if numeric:
        values = [float(x) for x in xs]
        log_x = len(values) > 1 and min(values) > 0 and max(values) / min(values) >= 10
        return charts.lines({name: sorted((float(x), y) for x, y in pts.items())
                             for name, pts in series.items()}, key, metric, log_x=log_x,
                            points=True)
    return charts.categories(xs, {name: [pts.get(x) for x in xs] for name, pts in series.items()},
                             key, metric)


def sweep_page(rows: list[dict[str, Any]], source: Path, metric: str,
               ascending: bool | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Returns (template context, charts) of a sweep's report; rows as find_runs reads them."""
    swept = swept_columns(rows)
    ranked = rank(rows, metric, ascending)
    name = metric.removeprefix("tuned.")
    chart: dict[str, Any] = {}
    axes = [key for key in swept if len({str(r["params"].get(key)) for r in ranked}) > 1]
    for i, key in enumerate(axes):
        chart[f"axis{i}"] = _axis_chart(ranked, key, swept, metric)
    curves = {label(r, swept): [tuple(p) for p in r["loss_curve"]] for r in ranked
              if r.get("loss_curve")}
    if curves:
        chart["curves"] = charts.lines(curves, "step", "training loss")
    points = []
    for i, r in enumerate(ranked, 1):
        job = _job(r)
        points.append({
            "rank": i, "run": r["run"], "label": label(r, swept),
            "params": [r["params"].get(k, "-") for k in swept],
            "metric": metric_of(r, metric), "base": r.get(f"base.{name}"),
            "delta": r.get(f"deltas.{name}"), "final_loss": r.get("final_loss"),
            "train_seconds": r.get("train_seconds"), "steps": r.get("steps"),
            "gates_passed": r.get("gates_passed"), "failed_gates": r.get("failed_gates") or [],
            "status": r.get("status") or job.get("status") or "unknown",
            "error": clip(job.get("error"), MAX_TEXT), "command": clip(r.get("command"), 2000),
        })
    best = points[0] if points and points[0]["metric"] is not None else None
    context = {
        "title": f"llmops sweep {Path(source).name}",
        "metric": metric, "order": "lower is better" if (
            lower_is_better(metric) if ascending is None else ascending) else "higher is better",
        "swept": swept, "axes": [(f"axis{i}", key) for i, key in enumerate(axes)],
        "single": [(key, ranked[0]["params"].get(key)) for key in swept if key not in axes],
        "points": points, "best": best,
        "counts": {s: sum(p["status"] == s for p in points)
                   for s in sorted({p["status"] for p in points})},
    }
    return context, chart
