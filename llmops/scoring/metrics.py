"""The eval metrics' names and natural directions, and deltas between two models' metrics.

The tool and refusal metrics are computed by the structural scorer (``scoring.tools``,
``score_tool_rows``). Pure, no torch: the config validator imports `METRICS` from here, gates.py
checks them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

METRICS: tuple[str, ...] = (
    "exact_match",
    "json_valid_rate",
    "refusal_rate",
    "false_refusal_rate",
    "tool_accuracy",
    "arg_f1",
    "schema_valid_rate",
)
"""Names of the scalar metrics a gate may refer to."""

METRIC_DIRECTIONS: dict[str, str] = {
    "exact_match": "min",
    "json_valid_rate": "min",
    "refusal_rate": "min",
    "false_refusal_rate": "max",
    "tool_accuracy": "min",
    "arg_f1": "min",
    "schema_valid_rate": "min",
}
"""Natural direction of each metric: "min" = higher is better (value must reach a minimum)."""


def metric_deltas(tuned: Mapping[str, Any], base: Mapping[str, Any],
                  metrics: Sequence[str] = METRICS) -> dict[str, float | None]:
    """Returns tuned - base for each metric (None where either side is unmeasured)."""
    out: dict[str, float | None] = {}
    for metric in metrics:
        t, b = tuned.get(metric), base.get(metric)
        out[metric] = None if t is None or b is None else round(float(t) - float(b), 10)
    return out
