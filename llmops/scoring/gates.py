"""Quality gates on the eval metrics: chosen (auto or the user's), checked in the config
(validate_gates) and after eval (check_gates).

``eval.gates: auto`` (the default) takes the gates of ``AUTO_GATES`` that fit what the test split
holds: tool rows -> call accuracy and JSON validity (and no regression in call accuracy), refusal
rows -> refusal rate, free text -> no regression in ROUGE-L and perplexity. A gate whose rows the
split lacks is ``skipped`` with the reason, never a failure. Pure functions, no torch.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Any

from llmops.errors import Problem, StageError
from llmops.scoring.metric_names import GATE_METRICS, direction

DIRECTIONS: tuple[str, ...] = ("min", "max")
_EPS = 1e-9

AUTO_GATES: dict[str, dict[str, Any]] = {
    "accuracy": {"metric": "tool.exact_match", "threshold": "primary"},
    "format": {"metric": "tool.json_valid_rate", "threshold": "format"},
    "safety": {"metric": "refusal.refusal_rate", "threshold": "safety"},
    "no_regression": {"metric": "tool.exact_match", "tolerance": "auto"},
    "text_quality": {"metric": "text.rouge_l", "tolerance": "auto"},
    "perplexity": {"metric": "text.perplexity", "tolerance": "auto"},
}
"""The auto gates; a threshold names its bound in ``eval.auto`` ("primary": ``eval.auto.accuracy``,
or 1 - ``usecase.target_error_rate`` when the use case sets one)."""


def gate_kind(metric: str) -> str | None:
    """Returns the kind of rows a KIND.METRIC name is measured on, None for a whole-split name."""
    return metric.split(".", 1)[0] if "." in metric else None


def choose_gates(gates: str | Mapping[str, Mapping[str, Any]], bounds: Mapping[str, float],
                 target_error_rate: float | None) -> tuple[str, dict[str, dict[str, Any]]]:
    """Resolves ``eval.gates`` into the gates to check.

    Args:
        gates: "auto", or a mapping of gates. An entry without ``metric`` adjusts the auto gate of
            its name (``eval.gates.accuracy.threshold=0.99``); while every entry does, the auto
            set stays, adjusted. An entry with its own ``metric`` makes the mapping the user's
            gate set, which replaces auto.
        bounds: ``eval.auto``: the accuracy, format and safety thresholds.
        target_error_rate: The use case's quality target, None when no use case sets one.

    Returns:
        ("auto" or "explicit", {name: gate}); each gate holds metric, direction, threshold or
        tolerance, and basis (where its bound comes from).
    """
    auto = {name: _auto_gate(name, bounds, target_error_rate) for name in AUTO_GATES}
    if isinstance(gates, str):
        return "auto", auto
    given = {name: {k: v for k, v in dict(g).items() if v is not None} for name, g in gates.items()}
    mode = "auto" if given and all("metric" not in g for g in given.values()) else "explicit"
    out = dict(auto) if mode == "auto" else {}
    for name, gate in given.items():
        base = dict(auto.get(name, {})) if "metric" not in gate else {}
        if "threshold" in gate or "tolerance" in gate:
            base.pop("threshold", None)
            base.pop("tolerance", None)
            base["basis"] = "eval.gates"
        out[name] = {**base, **gate}
        out[name].setdefault("basis", "eval.gates")
        if "metric" in out[name]:
            out[name].setdefault("direction", direction(str(out[name]["metric"])))
    return mode, out


def _auto_gate(name: str, bounds: Mapping[str, float], target: float | None) -> dict[str, Any]:
    spec = AUTO_GATES[name]
    gate: dict[str, Any] = {"metric": spec["metric"], "direction": direction(spec["metric"])}
    if "tolerance" in spec:
        gate.update(tolerance="auto", basis="no worse than base, tolerance by test split size")
    elif spec["threshold"] == "primary" and target is not None:
        gate.update(threshold=round(1.0 - float(target), 10),
                    basis=f"1 - usecase.target_error_rate {target:g}")
    else:
        key = "accuracy" if spec["threshold"] == "primary" else spec["threshold"]
        gate.update(threshold=float(bounds[key]), basis=f"eval.auto.{key}")
    return gate


def _is_relative(name: str, gate: Mapping[str, Any]) -> bool:
    """Tells whether a gate compares with the base model (no_regression), not a threshold."""
    return "tolerance" in gate or (name == "no_regression" and "threshold" not in gate)


def validate_gates(gates: Mapping[str, Any] | None, prefix: str = "eval.gates") -> list[Problem]:
    """Collects every problem in a resolved gates mapping, with key paths.

    Args:
        gates: {name: {"metric", "threshold", "direction"?}} or {name: {"metric", "tolerance"}}
            (a number, or "auto": by the test split's size).
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
        if metric not in GATE_METRICS:
            close = difflib.get_close_matches(str(metric), GATE_METRICS, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            problems.append(Problem(f"{key}.metric", f"{metric!r} is not one of "
                                                     f"{', '.join(GATE_METRICS)}.{hint}"))
        d = gate.get("direction")
        if d is not None and d not in DIRECTIONS:
            problems.append(Problem(f"{key}.direction", f"{d!r} is not one of min, max. Use min "
                                                        "when higher is better."))
        bound = "tolerance" if _is_relative(name, gate) else "threshold"
        value = gate.get(bound, 0.0 if bound == "tolerance" else None)
        if bound == "tolerance" and value == "auto":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(Problem(f"{key}.{bound}", f"must be a number (got {value!r}). E.g. "
                                                      f"{bound}: 0.5."))
        elif bound == "tolerance" and value < 0:
            problems.append(Problem(f"{key}.tolerance", f"must be >= 0 (got {value})."))
    return problems


def _skip_reason(metric: str, which: str) -> str:
    kind = gate_kind(metric)
    if kind is not None:
        return f"the test split holds no {kind} rows, so {metric} does not apply"
    return f"{metric} was not measured on the {which} model (no rows of its kind)"


def _auto_bound(gate: Mapping[str, Any], metric: str, base_value: float,
                samples: Mapping[str, Mapping[str, Any]], confidence: float
                ) -> tuple[float | None, float, str]:
    """Returns (threshold, tolerance, rule) of a ``tolerance: auto`` gate."""
    from llmops.scoring.tolerance import Sample, tolerance  # at eval time, not when compiling

    sign = 1.0 if gate["direction"] == "min" else -1.0
    perplexity = metric.rsplit(".", 1)[-1] == "perplexity"
    name = metric[: -len("perplexity")] + "loss" if perplexity else metric
    base = Sample.of((samples.get("base") or {}).get(name))
    tuned = Sample.of((samples.get("tuned") or {}).get(name))
    if base is None or tuned is None:
        return (base_value, 0.0, "no per-row spread recorded for this metric: tolerance 0")
    tol, rule = tolerance(base, tuned, confidence)
    if perplexity:  # compared in loss space: perplexity = exp(loss)
        threshold = base_value * math.exp(min(tol, 700.0))
        return threshold, tol, rule.replace("the gap", "tuned loss - base loss")
    return base_value - sign * tol, tol, rule


def check_gates(
    gates: Mapping[str, Any] | None,
    tuned: Mapping[str, Any],
    base: Mapping[str, Any],
    samples: Mapping[str, Mapping[str, Any]] | None = None,
    confidence: float = 0.95,
) -> tuple[list[dict[str, Any]], bool]:
    """Checks the tuned model's metrics against quality gates.

    An absolute gate {"metric", "threshold", "direction"} passes when value >= threshold
    (direction "min") or value <= threshold ("max"); direction defaults to the metric's natural one.
    A relative gate {"metric", "tolerance"} passes when the tuned value is no worse than the base
    value by more than the tolerance; ``tolerance: "auto"`` takes it from the test split's size
    and spread (``llmops.scoring.tolerance``) and records the rule. A gate whose metric was not
    measured (no rows of its kind) is reported as skipped, with the reason, and passes.

    Args:
        gates: Gates by name, as in params["gates"]; None or {} means no gates.
        tuned: The tuned model's metrics by gate name (KIND.METRIC names included).
        base: The base model's metrics, likewise.
        samples: {"base": {metric: Sample dict}, "tuned": {...}} for ``tolerance: auto``.
        confidence: The one-sided confidence of ``tolerance: auto``.

    Returns:
        (results, passed): one dict per gate with name, metric, value, threshold, direction,
        passed, margin (positive = room to spare), rule, plus base/tolerance for relative gates and
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
        gate = {**gate, "direction": gate.get("direction") or direction(metric)}
        sign = 1.0 if gate["direction"] == "min" else -1.0
        value = tuned.get(metric)
        result: dict[str, Any] = {"name": name, "metric": metric, "value": value}
        if gate.get("basis"):
            result["basis"] = gate["basis"]
        if _is_relative(name, gate):
            rule = "no worse than base (tolerance by test split size)"
            base_value = base.get(metric)
            tol: Any = gate.get("tolerance", 0.0)
            threshold = None
            if base_value is not None and tol == "auto":
                threshold, tol, rule = _auto_bound(gate, metric, float(base_value),
                                                   samples or {}, confidence)
            elif base_value is not None:
                tol = float(tol)
                threshold = base_value - sign * tol
                rule = f"no worse than base by more than a fixed tolerance of {tol:g}"
            result.update(base=base_value, tolerance=tol)
        else:
            threshold = float(gate["threshold"])
            rule = f"{metric} {'≥' if sign > 0 else '≤'} {threshold:g}"
        result.update(threshold=threshold, direction=gate["direction"], rule=rule)
        if value is None or threshold is None:
            which = "tuned" if value is None else "base"
            result.update(passed=True, margin=None, skipped=True,
                          reason=_skip_reason(metric, which))
        else:
            margin = sign * (float(value) - threshold)
            result.update(passed=margin >= -_EPS, margin=round(margin, 10), skipped=False)
        results.append(result)
    return results, all(r["passed"] for r in results)
