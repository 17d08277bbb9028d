"""The orpo stage's params and builder: ORPO (odds-ratio preference optimisation) of a LoRA
adapter, no reference model. Pure.

The stage reads the same preference pairs as dpo (``llmops.stages.pairs``); its inputs are
{"data"}, plus {"sft"} for sft_orpo and {"base"} for the tiny model. It writes pairs/ (derived or
read pairs), adapter/, checkpoints/, orpo_report.json (train_metrics rewards/*, held_out {start,
sft|base, orpo, improved}) and orpo_loss_curve.png.
"""

from typing_extensions import NotRequired, TypedDict

from llmops.compiler.builders.common import (
    DistributedParams,
    LoraParams,
    ModelParams,
    QuantParams,
    TrainParams,
    method_train,
)
from llmops.compiler.builders.data import PairsParams, data_limits, pairs_params
from llmops.compiler.inputs import PlanBuilder, StageInputs
from llmops.core.plan import METHOD_STAGES


class OrpoKnobs(TypedDict):
    """train.orpo's loss."""

    beta: float
    """Weight of the odds-ratio term against the SFT loss (the paper's lambda)."""


class OrpoParams(TypedDict):
    """Params of the orpo stage (train=orpo, sft_orpo)."""

    model: ModelParams
    lora: LoraParams | None
    quant: QuantParams
    train: TrainParams
    """sft's train, with learning_rate, epochs, max_steps and batch_size from train.orpo
    (learning_rate null: train.learning_rate; batch_size null: train's)."""
    orpo: OrpoKnobs
    pairs: PairsParams
    distributed: NotRequired[DistributedParams]
    """Only when distributed is not none."""


def add_orpo(b: PlanBuilder, s: StageInputs) -> None:
    """Adds the orpo stage (train=orpo, sft_orpo): on the sft adapter, or a new one on the base."""
    t, o = s.cfg.train, s.cfg.train.orpo
    if "orpo" not in METHOD_STAGES[t.method]:
        return
    lr = o.learning_rate if o.learning_rate is not None else t.learning_rate
    files: dict[str, str] = {}
    params: OrpoParams = {
        "model": s.model, "lora": s.lora, "quant": s.quant,
        "train": method_train(s.train, lr, o.epochs, o.max_steps, o.batch_size),
        "orpo": {"beta": o.beta},
        "pairs": pairs_params(s.cfg.data, data_limits(s.cfg.limits), files)}
    sft = "sft" in METHOD_STAGES[t.method]
    start = "the sft adapter" if sft else "a new adapter on the base"
    steps = f"{o.max_steps} steps" if o.max_steps > 0 else f"{o.epochs:g} epochs"
    b.add("orpo", s.training(params), ["data", *(["sft"] if sft else []), *s.base],
          f"ORPO beta {o.beta:g} (no reference) from {start}, lr {lr:g}, {steps}", files)
