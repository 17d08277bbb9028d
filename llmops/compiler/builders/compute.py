"""The compute stage's params and builder: memory, time and cost of the training step, and the
memory plan of every stage that loads a model. Pure.

The stage writes compute_plan.json: the training estimate, "facts_read" ({fact: {"value",
"from"}}), "stages" ({stage: {"device_gb", "host_gb", "parts_gb", "on": "device"|"host",
"fits"}}), "largest_stage", "stages_fit", "stage_fixes" ({stage: [fixes]}), "usable_host_gb" and
"capacity_from".
"""

from __future__ import annotations

from typing import cast

from typing_extensions import NotRequired, TypedDict

from llmops.compiler.builders.common import (
    DistributedParams,
    HardwareParams,
    LoraParams,
    ModelFacts,
    QuantParams,
    TrainParams,
    procs_text,
)
from llmops.compiler.inputs import PlanBuilder, StageInputs
from llmops.config.resolve import stage_inputs


class DataSize(TypedDict):
    """What the estimate knows of the data before the data stage runs."""

    n_train_rows: int | None
    """Train rows of data=task_api (n_examples less the held-out shares); None for files/hf."""
    avg_tokens: None
    """Not known at compile time (the estimate assumes train.max_length)."""


class LmEvalKnobs(TypedDict):
    """eval.lm_eval.*: the harness tasks and their batch."""

    tasks: list[str]
    limit: int | None
    num_fewshot: int | None
    batch_size: int


class EvalKnobs(TypedDict):
    """eval.*, gates and auto left out: what the eval stages' memory plan reads."""

    enabled: bool
    max_new_tokens: int
    batch_size: int
    token_budget: int
    logits_mb: float
    limit: int | None
    enforce: bool
    confidence: float
    worst_examples: int
    lm_eval: LmEvalKnobs


class DpoKnobs(TypedDict):
    batch_size: int | None
    """train.dpo.batch_size (None: train's)."""


class MergeKnobs(TypedDict):
    dtype: str
    """merge.dtype."""


class ExportKnobs(TypedDict):
    merge_dtype: str
    """deploy.merge_dtype."""


class GgufKnobs(TypedDict):
    quantization: list[str]
    max_new_tokens: int


class DeployKnobs(TypedDict):
    serve_quantization: str
    """The first of deploy.gguf.quantization (f16 when none)."""


class StageMemoryInputs(TypedDict):
    """What the model-loading stages were configured with, for their memory plans
    (``llmops.config.resolve.stage_inputs``)."""

    stages: list[str]
    """The planned model-loading stages, in plan order (sft, dpo, merge, eval_base, lm_eval,
    eval, export, gguf, deploy)."""
    max_length: int
    """data.max_length."""
    merged: bool
    """A merge stage is planned."""
    eval: EvalKnobs
    dpo: DpoKnobs
    merge: MergeKnobs
    export: ExportKnobs
    gguf: GgufKnobs
    deploy: DeployKnobs


class ComputeParams(TypedDict):
    """Params of the compute stage (something trains). Pure arithmetic: writes
    compute_plan.json."""

    model: ModelFacts
    lora: LoraParams | None
    quant: QuantParams
    train: TrainParams
    hardware: HardwareParams
    data: DataSize
    stages: StageMemoryInputs
    facts_from: NotRequired[dict[str, str]]
    """Only when model=hub read facts from the model's files (so a preset's fingerprint, the store
    key, is unchanged): {fact: where}, e.g. {"params": "DIR/config.json (qwen2 arithmetic)",
    "chat_template": "DIR/chat_template.jinja"}."""
    distributed: NotRequired[DistributedParams]
    """Only when distributed is not none."""


def add_compute(b: PlanBuilder, s: StageInputs) -> None:
    """Adds the compute stage (something trains): memory, time and cost of the training step, and
    the memory plan of every stage that loads a model."""
    if s.cfg.train.method == "none":
        return
    d = s.cfg.data
    n_train = (round(d.n_examples * (1 - d.val_fraction - d.test_fraction))
               if d.source == "task_api" else None)
    data: DataSize = {"n_train_rows": n_train, "avg_tokens": None}
    params: ComputeParams = {
        "model": s.facts, "lora": s.lora, "quant": s.quant, "train": s.train,
        "hardware": s.hardware, "data": data,
        "stages": cast(StageMemoryInputs, stage_inputs(s.cfg))}
    if s.resolved.facts_from:  # only then: a preset's fingerprint (the store key) stays as it was
        params["facts_from"] = dict(s.resolved.facts_from)
    b.add("compute", s.training(params), [],
          f"memory by part, fit on {s.hardware['name']}, step time and cost"
          f"{procs_text(s.distributed)}")
