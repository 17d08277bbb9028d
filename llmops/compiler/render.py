"""Renders a plan and a run summary as terminal tables (rich)."""

from __future__ import annotations

import logging
import numbers
from pathlib import Path
from typing import Any

from llmops.core.plan import Plan

log = logging.getLogger("llmops")

_KIND_ROWS = {"tool": "tool rows", "refusal": "refusal rows", "text": "free-text rows"}


def plain_console(piped_width: int) -> Any:
    """Returns a rich Console that prints text as it is: no markup, emoji codes or highlighting
    (a plan names data like alpaca[train], an override q=[f16], which markup would take for a
    style), as wide as the terminal, or piped_width columns when stdout is not one."""
    import sys

    from rich.console import Console

    return Console(highlight=False, markup=False, emoji=False,
                   width=None if sys.stdout.isatty() else piped_width)


def known_kinds(data_source: str) -> tuple[str, ...] | None:
    """Returns the row kinds the test split will hold when the plan knows them: the bundled
    Task-API set holds tool calls and refusals; a user's data is known only at eval time (None)."""
    return ("tool", "refusal") if data_source == "task_api" else None


def describe_gate(name: str, gate: dict[str, Any]) -> str:
    """Returns one gate as the plan shows it, e.g. 'accuracy: tool.exact_match ≥ 0.900 (basis)'."""
    metric, tol = gate.get("metric"), gate.get("tolerance")
    sign = "≤" if gate.get("direction") == "max" else "≥"
    if tol == "auto":
        bound = "no worse than base (tolerance by test split size)"
    elif tol is not None:
        bound = f"no worse than base by more than {fmt_value(tol)}"
    else:
        bound = f"{sign} {fmt_value(gate.get('threshold'))}"
    basis = gate.get("basis")
    extra = f" ({basis})" if basis and tol is None else ""
    return f"{name}: {metric} {bound}{extra}"


def _gate_kind(gate: dict[str, Any]) -> str | None:
    metric = str(gate.get("metric"))
    return metric.split(".", 1)[0] if "." in metric else None


def gates_summary(mode: str, gates: dict[str, dict[str, Any]],
                  kinds: tuple[str, ...] | None) -> str:
    """Returns the eval stage's one-line gate summary for the plan table."""
    if not gates:
        return "none"
    if mode != "auto":
        return ", ".join(gates)
    if kinds is None:
        return "auto, chosen from the test split at eval time (listed below)"
    names = [n for n, g in gates.items() if _gate_kind(g) in (None, *kinds)]
    return f"auto for {' and '.join(_KIND_ROWS[k] for k in kinds)}: {', '.join(names)}"


def gates_caption(plan: Plan) -> str | None:
    """Returns the lines under the plan table that list the eval gates and when each applies."""
    spec = next((s for s in plan.stages if s.kind == "eval"), None)
    gates = (spec.params.get("gates") or {}) if spec else {}
    if not gates:
        return None
    if spec.params.get("gate_mode") != "auto":
        lines = ["eval gates (yours; a gate whose rows the test split lacks is skipped):"]
        return "\n".join([*lines, *(f"  {describe_gate(n, g)}" for n, g in gates.items())])
    kinds = known_kinds(str(plan.config.get("data", {}).get("source")))
    where = ("the bundled set's " + " and ".join(_KIND_ROWS[k] for k in kinds) if kinds else
             "the test split at eval time (listed in eval_report.json gate_choice)")
    lines = [f"eval gates: auto, chosen from {where}:"]
    for n, g in gates.items():
        kind = _gate_kind(g)
        if kinds is not None and kind not in (None, *kinds):
            continue
        when = f"  {_KIND_ROWS[kind]} -> " if kind else "  all rows -> "
        lines.append(when + describe_gate(n, g))
    return "\n".join(lines)


def plan_table(plan: Plan) -> Any:
    """Returns a rich Table listing the plan's stages."""
    from rich.table import Table

    hw = plan.run["hardware"]
    where = hw.get("gpu_name") or f"CPU ({hw.get('cpu_count')} cores)"
    cfg = plan.config
    title = (f"llmops plan: model={cfg['model']['name']} "
             f"lora={'r' + str(cfg['lora']['r']) if cfg['lora']['enabled'] else 'none'} "
             f"quant={cfg['quant']['type']} on {hw['name']} [{where}]")
    table = Table(title=title, title_justify="left", caption=gates_caption(plan),
                  caption_justify="left")
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
    vs_base = ""
    if gate.get("base") is not None and isinstance(gate.get("tolerance"), numbers.Real):
        vs_base = (f"base {fmt_value(gate['base'])}, tolerance {fmt_value(gate['tolerance'])}")
    if gate.get("passed") is False and isinstance(margin, numbers.Real):
        return f"short by {fmt_value(abs(margin))}" + (f" ({vs_base})" if vs_base else "")
    return vs_base


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


def scale_out_caption(options: list[dict[str, Any]]) -> str | None:
    """Returns the lines listing the multi-GPU options of a one-process GPU plan, or None."""
    if not options:
        return None
    rows = [f"  {o['override']}: {o['gpus']} GPUs, ~{o['per_gpu_gb']:.1f} GB per GPU"
            f"{'' if o['fits'] else ' (does NOT fit)'}"
            + (f", step {o['step_time_s']:.3g} s" if o.get("step_time_s") is not None else "")
            + (f", run {o['run_time_h']:.3g} h" if o.get("run_time_h") is not None else "")
            for o in options]
    return "scale out (the same training over several GPUs):\n" + "\n".join(rows)


def api_table(report: dict[str, Any]) -> Any:
    """Returns a rich Table of a train.backend=openai compute plan: what would be uploaded, the
    tokens and how they were counted, the cost against the cap and the time estimate."""
    from rich.table import Table

    def num(v: Any) -> str:
        return f"{v:,}" if isinstance(v, int) else fmt_value(v)

    up = report["upload"]
    cap = "within" if report["within_cap"] else "ABOVE"
    title = f"compute plan: OpenAI fine-tuning of {report['model']} ({cap} the cost cap)"
    table = Table(title=title, title_justify="left", min_width=len(title))
    table.add_column("what")
    table.add_column("estimate", justify="right", overflow="fold")
    for label, value in (
            ("files uploaded", ", ".join(up["files"])),
            ("train rows", num(up["train_rows"])), ("validation rows",
                                                          num(up["val_rows"])),
            ("rows from", up["rows_from"]), ("tokens per row", num(up["tokens_per_row"])),
            ("train tokens", num(up["train_tokens"])), ("epochs", f"{up['epochs']:g}"),
            ("trained tokens", num(up["trained_tokens"])),
            ("tokens counted", up["token_count"]),
            ("price per 1M tokens (USD)", f"{report['price_per_1m_training_tokens_usd']:g}"),
            ("cost (USD)", num(report["cost_usd"])),
            ("cost cap (USD)", f"{report['max_cost_usd']:g}"),
            ("job time (h)", num(report["run_time_h"])),
            ("time from", report["time_from"])):
        table.add_row(label, value)
    return table


def compute_table(report: dict[str, Any]) -> Any:
    """Returns a rich Table of the compute plan: memory by part, fit, time and cost.

    Where model facts were read from config.json, the lines saying so follow the table.
    """
    from rich.table import Table

    if report.get("backend") == "openai":
        return api_table(report)
    fits = "fits" if report["fits"] else "does NOT fit"
    world = report.get("world_size", 1)
    cap = f"{report['capacity_gb']:.1f} GB" if report["capacity_gb"] else "unknown"
    title = (f"compute plan: {report['model']} on {report['hardware']}: "
             f"~{report['total_gb']:.1f} GB of {cap} ({fits})")
    if report.get("distributed", "none") != "none":
        title = (f"compute plan: {report['model']} on {report['hardware']}, "
                 f"{report['distributed']} x {world} processes: ~{report['total_gb']:.1f} GB "
                 f"per device of {cap} ({fits}), {report['all_devices_gb']:.1f} GB in all")
    table = Table(title=title, title_justify="left", min_width=len(title))
    table.add_column("part")
    table.add_column("GB", justify="right")
    for part, gb in report["parts_gb"].items():
        table.add_row(part, f"{gb:.2f}")
    table.add_row("total" if world == 1 else "total per device", f"{report['total_gb']:.2f}")
    extra: tuple[tuple[str, str], ...] = ()
    if world > 1:
        table.add_row(f"all {world} devices", f"{report['all_devices_gb']:.2f}")
        if report.get("host_gb"):
            table.add_row("host memory per node (offload)", f"{report['host_gb']:.2f}")
        extra = (("compute_time_s", "compute per step (s)"),
                 ("comm_time_s", "communication per step (s)"))
    for key, label in (*extra, ("step_time_s", "step time (s)"), ("run_time_h", "run time (h)"),
                       ("cost_usd", "cost (USD)")):
        if report.get(key) is not None:
            table.add_row(label, f"{report[key]:.3g}")
    lines = [c for c in (facts_caption(report.get("facts_read") or {}),
                         scale_out_caption(report.get("scale_out") or [])) if c]
    caption = "\n".join(lines) if lines else None
    stages = stage_table(report)
    if caption is None and stages is None:
        return table
    from rich.console import Group
    from rich.text import Text

    return Group(table, *([Text(caption, overflow="fold")] if caption else []),
                 *([stages] if stages is not None else []))


def stage_table(report: dict[str, Any]) -> Any:
    """Returns a rich Table of each planned stage's peak (device GB, host GB, fits), or None.

    On a CPU the device is the host: both columns show the same memory.
    """
    from rich.table import Table

    stages = report.get("stages") or {}
    if not stages:
        return None
    cuda = report.get("capacity_from", "").startswith("hardware profile")
    largest = report.get("largest_stage")
    dev = "GPU GB" if cuda else "device GB"
    title = (f"memory by stage (largest: {largest}; "
             f"{'fits' if report.get('stages_fit') else 'does NOT fit'}; capacity from "
             f"{report.get('capacity_from')})")
    table = Table(title=title, title_justify="left")
    for col in ("stage", dev, "host GB", "fits", "largest parts (GB)"):
        table.add_column(col, justify="right" if col.endswith("GB") else "left")
    for name, s in stages.items():
        top = sorted(s["parts_gb"].items(), key=lambda kv: -kv[1])[:3]
        table.add_row(name, f"{s['device_gb']:.2f}" if s["on"] == "device" or not cuda else "-",
                      f"{s['host_gb']:.2f}", "yes" if s.get("fits", True) else "NO",
                      ", ".join(f"{k} {v:.2f}" for k, v in top if v >= 0.005))
    return table


def facts_caption(read: dict[str, dict[str, Any]]) -> str | None:
    """Returns the lines saying which model facts were read and from where (None: none read)."""
    by_source: dict[str, list[str]] = {}
    for key, fact in read.items():
        by_source.setdefault(fact["from"], []).append(f"{key}={fact['value']}")
    lines = [f"model facts from {where}: {', '.join(facts)}" for where, facts in by_source.items()]
    return "\n".join(lines) or None
