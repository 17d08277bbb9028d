"""Renders a plan and a run summary as terminal tables (rich)."""

from __future__ import annotations

from typing import Any

from llmops.compiler.plan import Plan


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


def summary_table(manifest: dict[str, Any], eval_report: dict[str, Any] | None) -> list[Any]:
    """Returns rich renderables summarising a finished run."""
    from rich.table import Table

    out = []
    stages = Table(title="stages", title_justify="left")
    for col in ("stage", "status", "seconds"):
        stages.add_column(col)
    for name, s in manifest["stages"].items():
        stages.add_row(name, s["status"], f"{s.get('duration_s', 0):.1f}")
    out.append(stages)
    if eval_report:
        metrics = Table(title="evaluation (test split)", title_justify="left")
        for col in ("metric", "base", "tuned"):
            metrics.add_column(col)
        base, tuned = eval_report.get("base", {}), eval_report.get("tuned", {})
        for k in tuned:
            if isinstance(tuned.get(k), int | float) and not isinstance(tuned.get(k), bool):
                b = base.get(k)
                metrics.add_row(k, f"{b:.3f}" if isinstance(b, int | float) else "-",
                                f"{tuned[k]:.3f}")
        out.append(metrics)
        gates = Table(title=f"gates: {'PASSED' if eval_report.get('passed') else 'FAILED'}",
                      title_justify="left")
        for col in ("gate", "metric", "value", "threshold", "passed"):
            gates.add_column(col)
        for g in eval_report.get("gates", []):
            thr = g.get("threshold")
            gates.add_row(str(g.get("name")), str(g.get("metric")), f"{g.get('value', 0):.3f}",
                          f"{thr:.3f}" if isinstance(thr, int | float) else str(thr),
                          "yes" if g.get("passed") else "NO")
        out.append(gates)
    return out


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
