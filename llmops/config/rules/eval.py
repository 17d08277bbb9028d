"""Cross-field rules of the eval group: each gate names a known metric and a threshold."""

from __future__ import annotations

from llmops.config.hints import did_you_mean
from llmops.config.schema import AppConfig
from llmops.errors import Problem
from llmops.scoring.gates import AUTO_GATES
from llmops.scoring.metric_names import GATE_METRICS as KNOWN_METRICS
from llmops.scoring.metric_names import KINDS
from llmops.scoring.metric_names import METRICS as SPLIT_METRICS


def gate_problems(cfg: AppConfig) -> list[Problem]:
    """Returns the problems of eval.gates: a metric to name or unknown, a threshold to set."""
    out: list[Problem] = []
    if not cfg.eval.enabled or isinstance(cfg.eval.gates, str):
        return out
    for name, gate in cfg.eval.gates.items():
        key = f"eval.gates.{name}"
        if gate.metric is None:
            if name not in AUTO_GATES:
                out.append(Problem(
                    f"{key}.metric",
                    f"is required: '{name}' is not an auto gate ({', '.join(AUTO_GATES)}), so "
                    f"name its metric, e.g. {key}.metric=exact_match.",
                ))
            continue
        if gate.metric not in KNOWN_METRICS:
            out.append(Problem(
                f"{key}.metric",
                f"unknown metric '{gate.metric}'.{did_you_mean(gate.metric, KNOWN_METRICS)} "
                f"Known: {', '.join(SPLIT_METRICS)}; or KIND.METRIC for one kind of row "
                f"(KIND: {', '.join(KINDS)}; e.g. text.rouge_l, tool.exact_match).",
            ))
        if gate.threshold is None and gate.tolerance is None:
            out.append(Problem(
                f"{key}.threshold",
                "is required: set a threshold (e.g. 0.8), or a tolerance for a no-regression "
                "gate against the base model (a number, or auto: by the test split's size).",
            ))
    return out
