"""The lm_eval stage's params and builder: lm-evaluation-harness tasks on the base and (when
trained) the tuned model. Pure.

The stage's inputs are {"data", the tuned stage (merge, dpo or sft) when trained, "base"?}; it
writes tasks/ (local YAMLs + data, absolute paths) and lm_eval_report.json {tasks, base, tuned,
deltas, model_args, harness_batch_size, longest_request}.
"""

from typing_extensions import TypedDict

from llmops.compiler.builders.common import ModelParams
from llmops.compiler.inputs import PlanBuilder, StageInputs


class LmEvalParams(TypedDict):
    """Params of the lm_eval stage (eval enabled, eval.lm_eval.tasks set). The harness batch is
    min(batch_size, logits_mb / (vocab x 4 B) // longest request), at least 1."""

    model: ModelParams
    tasks: list[str]
    """Harness task names; llmops_* run on the test split."""
    limit: int | None
    """Documents per task; None: all."""
    num_fewshot: int | None
    """None: the task's own."""
    batch_size: int
    max_gen_toks: int
    """eval.max_new_tokens."""
    logits_mb: float
    """eval.logits_mb."""
    max_length: int
    """train.max_length: the longest request assumed for a task that is not local."""


def add_lm_eval(b: PlanBuilder, s: StageInputs) -> None:
    """Adds the lm_eval stage (eval enabled, eval.lm_eval.tasks set): harness tasks on the base
    and (when trained) the tuned model."""
    e = s.cfg.eval
    le, tuned = e.lm_eval, b.tuned()
    if not (e.enabled and le.tasks):
        return
    params: LmEvalParams = {
        "model": s.model, "tasks": list(le.tasks), "limit": le.limit,
        "num_fewshot": le.num_fewshot, "batch_size": le.batch_size,
        "max_gen_toks": e.max_new_tokens, "logits_mb": e.logits_mb,
        "max_length": s.train["max_length"]}
    needs = ["data", *([tuned] if tuned else []), *s.base]
    b.add("lm_eval", params, needs, f"lm-eval {', '.join(le.tasks)} on base"
          f"{' and tuned' if tuned else ''}{f' (limit {le.limit})' if le.limit else ''}")
