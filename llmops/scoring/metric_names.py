"""The metric names of a scored test split, and which way each is better. A leaf.

A plain name (``exact_match``) is measured over every row the metric applies to; a
``KIND.METRIC`` name (``tool.exact_match``, ``text.rouge_l``) over that kind's rows only
(``llmops.scoring.split`` measures them). The config rules and the compiler read these names
without importing the scorers.
"""

from __future__ import annotations

KINDS: tuple[str, ...] = ("tool", "refusal", "text")
_TOOL = ("exact_match", "json_valid_rate", "schema_valid_rate", "tool_accuracy", "call_exact",
         "arg_precision", "arg_recall", "arg_f1", "call_count_accuracy", "false_refusal_rate")
_LOSS = ("loss", "perplexity")
KIND_METRICS: dict[str, tuple[str, ...]] = {
    "tool": (*_TOOL, *_LOSS),
    "refusal": ("refusal_rate", "exact_match", *_LOSS),
    "text": ("rouge_l", "chrf", "exact_match", *_LOSS),
}
"""The metrics measured on each kind of row."""
METRICS: tuple[str, ...] = (*_TOOL, "refusal_rate", "no_call_accuracy", "rouge_l", "chrf", *_LOSS)
"""The metrics measured over the whole split."""
GATE_METRICS: tuple[str, ...] = (
    *METRICS, *(f"{kind}.{m}" for kind, names in KIND_METRICS.items() for m in names))
"""Every metric name a gate may name."""
LOWER_IS_BETTER = frozenset({"false_refusal_rate", "loss", "perplexity"})


def direction(metric: str) -> str:
    """Returns a metric's natural gate direction: "max" when lower is better, else "min"."""
    return "max" if metric.rsplit(".", 1)[-1] in LOWER_IS_BETTER else "min"
