"""The sft stage's params and builder: LoRA, QLoRA or full fine-tuning. Pure.

The stage writes adapter/ (LoRA) or model/ (full), checkpoints/, training_report.json and
loss_curve.png; its inputs are {"data"} plus {"base"} for the tiny model.
"""

from __future__ import annotations

from typing import Literal

from typing_extensions import NotRequired, TypedDict

from llmops.compiler.builders.common import (
    DistributedParams,
    LoraParams,
    ModelParams,
    QuantParams,
    TrainParams,
    procs_text,
)
from llmops.compiler.inputs import PlanBuilder, StageInputs
from llmops.core.plan import METHOD_STAGES


class SftParams(TypedDict):
    """Params of the sft stage (train=sft, sft_dpo)."""

    model: ModelParams
    lora: LoraParams | None
    """None: a full fine-tune (lora=none)."""
    quant: QuantParams
    train: TrainParams
    distributed: NotRequired[DistributedParams]
    """Only when distributed is not none."""
    reasoning: NotRequired[Literal["context"]]
    """data.reasoning, only when context: the reasoning stays in the rows the model sees, out of
    the loss (train, the default, keeps it in; drop: the data stage wrote none)."""


def add_sft(b: PlanBuilder, s: StageInputs) -> None:
    """Adds the sft stage (train=sft and every sft_<method>): LoRA, QLoRA or full fine-tuning."""
    t, cfg = s.cfg.train, s.cfg
    if "sft" not in METHOD_STAGES[t.method]:
        return
    adapter = f"LoRA r{cfg.lora.r}" if s.lora else "full fine-tune"
    qtxt = f" on {cfg.quant.type}" if cfg.quant.type != "none" else ""
    steps = f"{t.max_steps} steps" if t.max_steps > 0 else f"{t.epochs:g} epochs"
    params: SftParams = {"model": s.model, "lora": s.lora, "quant": s.quant, "train": s.train}
    if cfg.data.reasoning == "context":  # only then: other fingerprints stay
        params["reasoning"] = "context"
    b.add("sft", s.training(params),
          ["data", *s.base],
          f"{adapter}{qtxt}, lr {t.learning_rate:g}, {steps}, batch {s.train['batch_size']}x"
          f"{s.train['grad_accum']}, {s.resolved.backend} on {s.resolved.device}"
          f"{procs_text(s.distributed)}")
