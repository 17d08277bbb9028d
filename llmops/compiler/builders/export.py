"""The export stage's params and builder: the tuned model as an adapter copy and/or a merged
model. Pure.

The stage's inputs are the tuned stage (merge, else dpo, else sft), "eval" when planned, and
"base" for the tiny model; it writes adapter/, merged/ and export_report.json.
"""

from typing_extensions import NotRequired, TypedDict

from llmops.compiler.builders.common import ModelParams
from llmops.compiler.inputs import PlanBuilder, StageInputs


class ExportParams(TypedDict):
    """Params of the export stage (deploy target set, a tuned model)."""

    model: ModelParams
    formats: list[str]
    """deploy.formats (adapter, merged), adapter left out for a full fine-tune."""
    merge_dtype: str
    """float32, bfloat16 or float16."""
    parity_tolerance: NotRequired[float]
    """Not compiled from any option: when set, the merged-vs-adapter logit tolerance in place
    of merge_dtype's default."""


def add_export(b: PlanBuilder, s: StageInputs) -> None:
    """Adds the export stage (deploy target set, a tuned model): adapter and/or merged model."""
    dp, tuned = s.cfg.deploy, b.tuned()
    if dp.target == "none" or not tuned or s.resolved.backend == "openai":
        return  # train.backend=openai: the tuned model stays at OpenAI, nothing to export
    needs = [tuned, *(["eval"] if b.has("eval") else []), *s.base]
    formats = [f for f in dp.formats if s.lora or f != "adapter"]
    params: ExportParams = {"model": s.model, "formats": formats, "merge_dtype": dp.merge_dtype}
    b.add("export", params, needs, ", ".join(formats))
