"""The eval_base stage's params and builder: the base model on the test split, once per base
and data (a sweep shares it). Pure.

The stage's inputs are {"data"} (test.jsonl) and {"base"} for the tiny model; it writes
base_eval.json {"metrics", "by_kind", "stats", "n", "samples", "predictions", "answer_syntax",
"worst_examples", "seconds", "oom_retries"}.
"""

from typing import Literal

from typing_extensions import NotRequired, TypedDict

from llmops.compiler.builders.common import ApiModelParams, ModelParams, QuantParams
from llmops.compiler.inputs import PlanBuilder, StageInputs, api_model


class EvalBaseParams(TypedDict):
    """Params of the eval_base stage (eval enabled), and the part the eval stage shares.
    ``llmops.planning.eval_memory`` estimates the stage's peak from batch_size, token_budget
    and logits_mb."""

    model: ModelParams
    quant: QuantParams
    max_new_tokens: int
    """Tokens generated per answer."""
    batch_size: int
    """Most rows of a batch."""
    token_budget: int
    """Most rows x padded length of a batch (prompt + max_new_tokens in generation)."""
    logits_mb: float
    """MiB of fp32 full-vocabulary logits the held-out loss holds at once."""
    limit: int | None
    """Evaluate only the first N test rows; None: all."""
    worst_examples: int
    """Worst rows listed per metric."""
    reasoning: NotRequired[Literal["context"]]
    """data.reasoning, only when context: the held-out loss leaves the answers' reasoning out, as
    sft's loss does (train, the default, scores it; drop: the data stage wrote none)."""
    api: NotRequired[ApiModelParams]
    """Only with train.backend=openai: answers come from the API's chat completions (the base
    model id here, the fine-tuned id in eval), with no held-out loss."""


def eval_params(s: StageInputs) -> EvalBaseParams:
    """Returns the params eval_base and eval share."""
    e = s.cfg.eval
    params: EvalBaseParams = {
        "model": s.model, "quant": s.quant, "max_new_tokens": e.max_new_tokens,
        "batch_size": e.batch_size, "token_budget": e.token_budget, "logits_mb": e.logits_mb,
        "limit": e.limit, "worst_examples": e.worst_examples}
    if s.cfg.data.reasoning == "context":  # only then: other fingerprints stay
        params["reasoning"] = "context"
    api = api_model(s)
    if api:  # only then: other fingerprints stay
        params["api"] = api
    return params


def add_eval_base(b: PlanBuilder, s: StageInputs) -> None:
    """Adds the eval_base stage (eval enabled): the base model on the test split, once per base."""
    e = s.cfg.eval
    if not e.enabled:
        return
    params = eval_params(s)
    who = f"base model {params['api']['model']} via chat completions" if "api" in params \
        else "base model"
    b.add("eval_base", params, ["data", *s.base], f"{who} on the test split"
          f"{f' (first {e.limit})' if e.limit else ''}")
