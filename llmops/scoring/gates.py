"""Quality gates on the eval metrics: checked in the config (validate_gates) and after eval.

Pure functions, no torch.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from llmops.errors import Problem, StageError
from llmops.scoring.metrics import METRIC_DIRECTIONS, METRICS

DIRECTIONS: tuple[str, ...] = ("min", "max")
_EPS = 1e-9


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
