"""Scores predictions against reference chat rows: the eval metrics and their names.

Pure functions, no torch: the config validator imports `METRICS` from here, gates.py checks them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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


def metric_deltas(tuned: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, float | None]:
    """Returns tuned - base for every scalar metric (None where either side is unmeasured)."""
    out: dict[str, float | None] = {}
    for metric in METRICS:
        t, b = tuned.get(metric), base.get(metric)
        out[metric] = None if t is None or b is None else round(float(t) - float(b), 10)
    return out
