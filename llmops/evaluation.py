"""Scores predictions against reference chat rows and checks quality gates.

Pure functions, no torch: the config validator imports `METRICS` and `validate_gates` from here.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from llmops.errors import Problem, StageError

METRICS: tuple[str, ...] = (
    "exact_match",
    "json_valid_rate",
    "refusal_rate",
    "false_refusal_rate",
)
"""Names of the scalar metrics a gate may refer to."""

METRIC_DIRECTIONS: dict[str, str] = {
    "exact_match": "min",
    "json_valid_rate": "min",
    "refusal_rate": "min",
    "false_refusal_rate": "max",
}
"""Natural direction of each metric: "min" = higher is better (value must reach a minimum)."""

DIRECTIONS: tuple[str, ...] = ("min", "max")
_EPS = 1e-9


def _reference(row: Mapping[str, Any]) -> str:
    """Returns the reference answer: the content of the row's last message."""
    return str(row["messages"][-1]["content"])


def _rate(hits: int, total: int) -> float | None:
    """Returns hits / total, or None when nothing was measured."""
    return hits / total if total else None


def score_row(row: Mapping[str, Any], prediction: str) -> dict[str, Any]:
    """Scores one prediction against one reference row.

    A row is a must-refuse row when `meta.refuse` is true, a tool row when its reference parses as a
    tool call, and a plain row otherwise (scored by whitespace-stripped string equality).

    Args:
        row: Reference row in chat form; the last message is the reference answer.
        prediction: The model's decoded answer.

    Returns:
        Dict with keys kind ("refuse"|"tool"|"plain"), tool (str|None), exact, parsed (the
        prediction parses as a tool call) and refused (the prediction is a refusal).
    """
    from llmops.data import task_api

    meta = row.get("meta") or {}
    reference = _reference(row)
    ref_call = task_api.parse_call(reference)
    pred_call = task_api.parse_call(prediction)
    refused = bool(task_api.is_refusal(prediction))
    if meta.get("refuse"):
        kind, exact = "refuse", refused
    else:
        kind = "tool" if ref_call is not None else "plain"
        exact = bool(task_api.calls_equal(prediction, reference))
    tool = meta.get("tool")
    if tool is None and ref_call is not None:
        tool = ref_call.get("tool")
    return {
        "kind": kind,
        "tool": tool if kind == "tool" else None,
        "exact": bool(exact),
        "parsed": pred_call is not None,
        "refused": refused,
    }


def compute_metrics(
    rows: Sequence[Mapping[str, Any]], predictions: Sequence[str]
) -> dict[str, Any]:
    """Computes the evaluation metrics of predictions against reference rows.

    Args:
        rows: Reference rows in chat form (last message = reference answer; meta.tool, meta.refuse).
        predictions: One decoded prediction per row, in the same order.

    Returns:
        {"exact_match", "json_valid_rate", "refusal_rate", "false_refusal_rate": float|None,
        "per_tool": {tool: exact match}, "counts": {"total", "tool", "refuse", "plain"}}.
        A rate is None when no row of its kind exists (e.g. refusal_rate without must-refuse rows).

    Raises:
        ValueError: If rows and predictions differ in length.
    """
    if len(rows) != len(predictions):
        raise ValueError(
            f"compute_metrics: got {len(rows)} rows but {len(predictions)} predictions. "
            "Pass exactly one prediction per reference row."
        )
    scores = [score_row(row, pred) for row, pred in zip(rows, predictions, strict=True)]
    tool_rows = [s for s in scores if s["kind"] == "tool"]
    refuse_rows = [s for s in scores if s["kind"] == "refuse"]
    per_tool_hits: dict[str, list[int]] = {}
    for s in tool_rows:
        hits = per_tool_hits.setdefault(str(s["tool"]), [0, 0])
        hits[0] += int(s["exact"])
        hits[1] += 1
    return {
        "exact_match": _rate(sum(s["exact"] for s in scores), len(scores)),
        "json_valid_rate": _rate(sum(s["parsed"] for s in tool_rows), len(tool_rows)),
        "refusal_rate": _rate(sum(s["refused"] for s in refuse_rows), len(refuse_rows)),
        "false_refusal_rate": _rate(sum(s["refused"] for s in tool_rows), len(tool_rows)),
        "per_tool": {tool: h / n for tool, (h, n) in sorted(per_tool_hits.items())},
        "counts": {
            "total": len(scores),
            "tool": len(tool_rows),
            "refuse": len(refuse_rows),
            "plain": len(scores) - len(tool_rows) - len(refuse_rows),
        },
    }


def _is_relative(name: str, gate: Mapping[str, Any]) -> bool:
    """Tells whether a gate compares with the base model (no_regression), not a threshold."""
    return "tolerance" in gate or (name == "no_regression" and "threshold" not in gate)


def validate_gates(gates: Mapping[str, Any] | None, prefix: str = "eval.gates") -> list[Problem]:
    """Collects every problem in a gates mapping, with key paths, for the config validator.

    Args:
        gates: {name: {"metric", "threshold", "direction"?}} or {name: {"metric", "tolerance"}}.
        prefix: Key path of the gates mapping in the config.

    Returns:
        The problems found; empty when the gates are valid.
    """
    problems: list[Problem] = []
    for name, gate in (gates or {}).items():
        key = f"{prefix}.{name}"
        if not isinstance(gate, Mapping):
            problems.append(Problem(key, f"must be a mapping with 'metric' (got {gate!r})."))
            continue
        metric = gate.get("metric")
        if metric not in METRICS:
            close = difflib.get_close_matches(str(metric), METRICS, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            problems.append(
                Problem(
                    f"{key}.metric",
                    f"{metric!r} is not one of {', '.join(METRICS)}.{hint}",
                )
            )
        direction = gate.get("direction")
        if direction is not None and direction not in DIRECTIONS:
            problems.append(
                Problem(
                    f"{key}.direction",
                    f"{direction!r} is not one of min, max. Use min when higher is better.",
                )
            )
        bound = "tolerance" if _is_relative(name, gate) else "threshold"
        value = gate.get(bound, 0.0 if bound == "tolerance" else None)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(
                Problem(f"{key}.{bound}", f"must be a number (got {value!r}). E.g. {bound}: 0.5.")
            )
        elif bound == "tolerance" and value < 0:
            problems.append(Problem(f"{key}.tolerance", f"must be >= 0 (got {value})."))
    return problems


def check_gates(
    gates: Mapping[str, Any] | None,
    tuned: Mapping[str, Any],
    base: Mapping[str, Any],
) -> tuple[list[dict[str, Any]], bool]:
    """Checks the tuned model's metrics against quality gates.

    An absolute gate {"metric", "threshold", "direction"} passes when value >= threshold
    (direction "min") or value <= threshold ("max"); direction defaults to the metric's natural one.
    A relative gate {"metric", "tolerance"} (e.g. no_regression) passes when the tuned value is no
    worse than the base value by more than the tolerance. A gate whose metric could not be measured
    (None, e.g. refusal_rate on data without must-refuse rows) is reported as skipped and passes.

    Args:
        gates: Gates by name, as in params["gates"]; None or {} means no gates.
        tuned: The tuned model's metrics.
        base: The base model's metrics.

    Returns:
        (results, passed): one dict per gate with name, metric, value, threshold, direction,
        passed, margin (positive = room to spare), plus base/tolerance for relative gates and
        skipped/reason for unmeasured ones; passed is True when every gate passed.

    Raises:
        StageError: If a gate is malformed or names an unknown metric.
    """
    problems = validate_gates(gates)
    if problems:
        raise StageError(
            "eval: invalid gates: " + "; ".join(str(p) for p in problems) + ". Fix eval.gates."
        )
    results: list[dict[str, Any]] = []
    for name, gate in (gates or {}).items():
        metric = gate["metric"]
        direction = gate.get("direction") or METRIC_DIRECTIONS[metric]
        sign = 1.0 if direction == "min" else -1.0
        value = tuned.get(metric)
        result: dict[str, Any] = {"name": name, "metric": metric, "value": value}
        if _is_relative(name, gate):
            tolerance = float(gate.get("tolerance", 0.0))
            base_value = base.get(metric)
            threshold = None if base_value is None else base_value - sign * tolerance
            result.update(base=base_value, tolerance=tolerance)
        else:
            threshold = float(gate["threshold"])
        result.update(threshold=threshold, direction=direction)
        if value is None or threshold is None:
            which = "tuned" if value is None else "base"
            result.update(
                passed=True,
                margin=None,
                skipped=True,
                reason=f"{metric} was not measured on the {which} model (no rows of its kind)",
            )
        else:
            margin = sign * (float(value) - threshold)
            result.update(passed=margin >= -_EPS, margin=round(margin, 10), skipped=False)
        results.append(result)
    return results, all(r["passed"] for r in results)


def metric_deltas(tuned: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, float | None]:
    """Returns tuned - base for every scalar metric (None where either side is unmeasured)."""
    out: dict[str, float | None] = {}
    for metric in METRICS:
        t, b = tuned.get(metric), base.get(metric)
        out[metric] = None if t is None or b is None else round(float(t) - float(b), 10)
    return out
