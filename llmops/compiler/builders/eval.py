"""The eval stage's params and builder: the tuned model against the base, and the gates. Pure.

The stage's inputs are {"data", the tuned stage (merge, else dpo, else sft), "eval_base",
"base"?}; it writes eval_report.json {"base", "tuned", "gates", "passed", "gate_choice",
"metrics_by_kind", "worst_examples", "deltas", "answer_syntax", "oom_retries": [{"model":
"base"|"tuned", "phase": "generation"|"held-out loss", "rows": [from, to], "token_budget":
[from, to]}], ...}.
"""

from typing import Literal, cast

from typing_extensions import NotRequired, TypedDict

from llmops.compiler.builders.eval_base import EvalBaseParams, eval_params
from llmops.compiler.inputs import PlanBuilder, StageInputs
from llmops.compiler.render import gates_summary, known_kinds
from llmops.scoring.gates import choose_gates


class GateParams(TypedDict):
    """One resolved gate (``llmops.scoring.gates.choose_gates``), e.g. {"metric":
    "tool.exact_match", "direction": "min", "threshold": 0.9, "basis": "1 -
    usecase.target_error_rate 0.1"}; a relative gate (no_regression, text_quality, perplexity)
    holds a tolerance instead of a threshold."""

    metric: NotRequired[str]
    direction: NotRequired[str]
    """min: value >= threshold; max: value <= threshold."""
    threshold: NotRequired[float]
    tolerance: NotRequired[float | Literal["auto"]]
    """Allowed drop against the base; auto: by the test split's size (confidence)."""
    basis: str
    """Where the bound comes from (eval.auto.format, eval.gates, ...)."""


class EvalParams(EvalBaseParams):
    """Params of the eval stage (eval enabled, a tuned model): eval_base's and the gates."""

    gates: dict[str, GateParams]
    """Resolved: auto, or the user's, with auto thresholds filled in."""
    gate_mode: Literal["auto", "explicit"]
    confidence: float
    """One-sided confidence of the no-regression tests."""
    enforce: bool
    """A failed gate stops the plan before export (read by the runner, not the stage)."""


def add_eval(b: PlanBuilder, s: StageInputs) -> None:
    """Adds the eval stage (eval enabled, a tuned model): tuned vs base, and the gates.

    The gates are resolved here (``choose_gates``): auto or the user's, with the primary
    threshold from the use case's quality target when it sets one.
    """
    e, tuned = s.cfg.eval, b.tuned()
    if not e.enabled or not tuned:
        return
    given = e.gates if isinstance(e.gates, str) else {
        k: g.model_dump(exclude_none=True) for k, g in e.gates.items()}
    target = s.cfg.usecase.target_error_rate if s.cfg.usecase.enabled else None
    mode, gates = choose_gates(given, e.auto.model_dump(), target)
    params: EvalParams = {**eval_params(s), "gates": cast(dict[str, GateParams], gates),
                          "gate_mode": cast(Literal["auto", "explicit"], mode),
                          "confidence": e.confidence, "enforce": e.enforce}
    b.add("eval", params,
          ["data", tuned, "eval_base", *s.base],
          f"tuned vs base; gates: {gates_summary(mode, gates, known_kinds(s.cfg.data.source))}"
          f"{'' if e.enforce else ' (not enforced)'}")
