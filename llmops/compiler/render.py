"""Renders a plan and a run summary as terminal tables (rich)."""

from __future__ import annotations

import logging
import numbers
from pathlib import Path
from typing import Any

from llmops.compiler.plan import Plan

log = logging.getLogger("llmops")


def plan_table(plan: Plan) -> Any:
    """Returns a rich Table listing the plan's stages."""
    from rich.table import Table

    hw = plan.run["hardware"]
    where = hw.get("gpu_name") or f"CPU ({hw.get('cpu_count')} cores)"
    cfg = plan.config
    title = (f"llmops plan: model={cfg['model']['name']} "
             f"lora={'r' + str(cfg['lora']['r']) if cfg['lora']['enabled'] else 'none'} "
             f"quant={cfg['quant']['type']} on {hw['name']} [{where}]")
    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("stage")
    table.add_column("needs")
    table.add_column("fingerprint")
    table.add_column("what it does")
    for i, s in enumerate(plan.stages, 1):
        table.add_row(str(i), s.name, ", ".join(s.needs) or "-", s.fingerprint[:12], s.summary)
    return table


def fmt_value(value: Any, digits: int = 3, missing: str = "n/a") -> str:
    """Formats a metric value for a table or a message, whatever the report holds.

    Args:
        value: A number (numpy scalars included), None (not measured, not applicable) or
            anything else (shown as text).
        digits: Decimals for numbers.
        missing: What None becomes.

    Returns:
        The text to show; never raises.
    """
    if value is None:
        return missing
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return f"{float(value):.{digits}f}"
    return str(value)


def gate_state(gate: dict[str, Any]) -> str:
    """Returns a gate's outcome as shown: 'yes', 'NO', 'skipped' (its metric does not apply)."""
    if gate.get("skipped"):
        return "skipped"
    passed = gate.get("passed")
    return "yes" if passed is True else "NO" if passed is False else fmt_value(passed)


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _scalar(value: Any) -> bool:
    return value is None or (isinstance(value, numbers.Real) and not isinstance(value, bool))


def _gates_title(eval_report: dict[str, Any], gates: list[dict[str, Any]]) -> str:
    passed = eval_report.get("passed")
    verdict = "PASSED" if passed is True else "FAILED" if passed is False else "not recorded"
    skipped = sum(gate_state(g) == "skipped" for g in gates)
    return f"gates: {verdict}" + (f" ({skipped} skipped: metric not measured)" if skipped else "")


def _gate_note(gate: dict[str, Any]) -> str:
    if gate_state(gate) == "skipped":
        return str(gate.get("reason") or "its metric was not measured")
    margin = gate.get("margin")
    if gate.get("passed") is False and isinstance(margin, numbers.Real):
        return f"short by {fmt_value(abs(margin))}"
    return ""


def summary_table(manifest: dict[str, Any], eval_report: dict[str, Any] | None) -> list[Any]:
    """Returns rich renderables summarising a finished run.

    Missing, None and non-numeric values are shown as such ('n/a', text), and a gate whose metric
    was not measured as 'skipped', so any report a run can write renders.
    """
    from rich.table import Table

    out = []
    stages = Table(title="stages", title_justify="left")
    for col in ("stage", "status", "seconds"):
        stages.add_column(col)
    for name, s in _mapping(manifest.get("stages")).items():
        s = _mapping(s)
        stages.add_row(str(name), str(s.get("status")), fmt_value(s.get("duration_s"), 1, "-"))
    out.append(stages)
    if eval_report:
        metrics = Table(title="evaluation (test split)", title_justify="left")
        for col in ("metric", "base", "tuned"):
            metrics.add_column(col)
        base, tuned = _mapping(eval_report.get("base")), _mapping(eval_report.get("tuned"))
        for k in [*tuned, *(k for k in base if k not in tuned)]:
            if _scalar(tuned.get(k)) and _scalar(base.get(k)):
                metrics.add_row(str(k), fmt_value(base.get(k)), fmt_value(tuned.get(k)))
        out.append(metrics)
        gates_list = [_mapping(g) for g in eval_report.get("gates") or []]
        gates = Table(title=_gates_title(eval_report, gates_list), title_justify="left")
        for col in ("gate", "metric", "value", "threshold", "passed", "note"):
            gates.add_column(col)
        for g in gates_list:
            gates.add_row(str(g.get("name")), str(g.get("metric")), fmt_value(g.get("value")),
                          fmt_value(g.get("threshold")), gate_state(g), _gate_note(g))
        out.append(gates)
    return out


def print_summary(console: Any, manifest: dict[str, Any], eval_report: dict[str, Any] | None,
                  run_dir: Path) -> None:
    """Prints the run summary; logs a warning instead of raising when it cannot.

    The run has finished and its manifest holds its status: nothing here (a report the tables
    cannot show, a closed or broken stdout) may change that status or the exit code.
    """
    try:
        for renderable in summary_table(manifest, eval_report):
            console.print(renderable)
        console.print(f"run folder: {run_dir}")
    except Exception as exc:  # noqa: BLE001 - the run's outcome must not depend on its summary
        log.warning("could not print the run summary (%s: %s); the run's status is unaffected. "
                    "Its reports are in %s.", type(exc).__name__, exc, run_dir)


def compute_table(report: dict[str, Any]) -> Any:
    """Returns a rich Table of the compute plan: memory by part, fit, time and cost."""
    from rich.table import Table

    fits = "fits" if report["fits"] else "does NOT fit"
    title = (f"compute plan: {report['model']} on {report['hardware']}: "
             f"~{report['total_gb']:.1f} GB of {report['capacity_gb']:.1f} GB ({fits})")
    table = Table(title=title, title_justify="left", min_width=len(title))
    table.add_column("part")
    table.add_column("GB", justify="right")
    for part, gb in report["parts_gb"].items():
        table.add_row(part, f"{gb:.2f}")
    table.add_row("total", f"{report['total_gb']:.2f}")
    for key, label in (("step_time_s", "step time (s)"), ("run_time_h", "run time (h)"),
                       ("cost_usd", "cost (USD)")):
        if report.get(key) is not None:
            table.add_row(label, f"{report[key]:.3g}")
    return table
