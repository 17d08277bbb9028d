"""Reports a user opens in a browser: one self-contained HTML file per run and per sweep.

    python -m llmops.report RUN_DIR      # rebuilds RUN_DIR/report.html
    python -m llmops.report SWEEP_DIR    # rebuilds SWEEP_DIR/report.html (the leaderboard)

The CLI writes a run's report.html when the run ends, however it ends (a failed or interrupted
run's report opens with the failing stage and its error); `python -m llmops.compare` writes a
sweep's. A report loads nothing (no CDN, no network): Chart.js is vendored (assets/), every
script is inlined and allowed by its hash in the page's Content-Security-Policy, and everything a
run wrote (rows, answers, names) is escaped by Jinja2's autoescaping.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmops.report.render import REPORT_FILE, ReportTooLarge

__all__ = ["REPORT_FILE", "ReportTooLarge", "write_run_report", "write_sweep_report"]


def write_run_report(run_dir: Path) -> Path:
    """Writes run_dir/report.html from the run folder's files; returns its path.

    Raises:
        FileNotFoundError: run_dir holds no manifest.json or plan.json.
        ReportTooLarge: The page would be over 5 MB (nothing is written).
    """
    from llmops.report.render import render, write
    from llmops.report.run import run_page

    context, charts = run_page(Path(run_dir))
    return write(Path(run_dir) / REPORT_FILE, render("run.html.j2", context, charts,
                                                     Path(run_dir)))


def write_sweep_report(rows: list[dict[str, Any]], out_dir: Path, source: Path | str,
                       metric: str = "exact_match", ascending: bool | None = None) -> Path:
    """Writes out_dir/report.html for a sweep's leaderboard rows; returns its path.

    Args:
        rows: One row per point, as llmops.tracking.leaderboard.find_runs reads them.
        out_dir: Where report.html goes.
        source: The sweep folder (or W&B group) the rows come from, named on the page.
        metric: The metric that ranks the points.
        ascending: Smaller is better (default: by the metric's name, as compare ranks).
    """
    from llmops.report.render import render, write
    from llmops.report.sweep import sweep_page

    context, charts = sweep_page(rows, Path(str(source)), metric, ascending)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return write(Path(out_dir) / REPORT_FILE, render("sweep.html.j2", context, charts,
                                                     Path(str(source))))
