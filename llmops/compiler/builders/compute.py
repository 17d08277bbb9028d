"""The compute stage's params and builder: memory, time and cost of the training step, and the
memory plan of every stage that loads a model. Pure.

The stage writes compute_plan.json: the training estimate, "facts_read" ({fact: {"value",
"from"}}), "stages" ({stage: {"device_gb", "host_gb", "parts_gb", "on": "device"|"host",
"fits"}}), "largest_stage", "stages_fit", "stage_fixes" ({stage: [fixes]}), "usable_host_gb" and
"capacity_from".
"""

from typing import Any, cast

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
from llmops.planning.stage_memory import StageMemoryInputs


class DataSize(TypedDict):
    """What the estimate knows of the data before the data stage runs."""

    n_train_rows: int | None
    """Train rows of data=task_api (n_examples less the held-out shares); None for files/hf."""
    avg_tokens: None
    """Not known at compile time (the estimate assumes train.max_length)."""


class ApiPlanParams(TypedDict):
    """train.backend=openai: what the job costs and takes instead of memory (the upload
    estimate: ``llmops.config.rules.openai_ft.upload_estimate``)."""

    model: str
    upload: dict[str, Any]
    price_per_1m_training_tokens_usd: float
    max_cost_usd: float
    api_seconds_per_1k_tokens: float
    queue_minutes: float


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
    openai: NotRequired[ApiPlanParams]
    """Only with train.backend=openai: the plan is the API's cost and time, not memory."""


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
    if s.resolved.backend == "openai":
        from llmops.config.rules.openai_ft import upload_estimate

        o = s.cfg.train.openai
        params["openai"] = {
            "model": o.model, "upload": upload_estimate(s.cfg),
            "price_per_1m_training_tokens_usd": o.price_per_1m_training_tokens_usd,
            "max_cost_usd": o.max_cost_usd,
            "api_seconds_per_1k_tokens": o.api_seconds_per_1k_tokens,
            "queue_minutes": o.queue_minutes}
        b.add("compute", params, [], f"OpenAI fine-tuning of {o.model}: cost and time of the "
                                     "job (no local GPU memory)")
        return
    if s.resolved.facts_from:  # only then: a preset's fingerprint (the store key) stays as it was
        params["facts_from"] = dict(s.resolved.facts_from)
    b.add("compute", s.training(params), [],
          f"memory by part, fit on {s.hardware['name']}, step time and cost"
          f"{procs_text(s.distributed)}")
