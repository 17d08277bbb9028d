"""The simpo stage's params and builder: SimPO (simple preference optimisation, TRL's CPO trainer
with loss_type simpo and cpo_alpha 0) of a LoRA adapter, no reference model. Pure.

The stage reads the same preference pairs as dpo (``llmops.stages.pairs``); its inputs are
{"data"}, plus {"sft"} for sft_simpo and {"base"} for the tiny model. It writes pairs/ (derived
or read pairs), adapter/, checkpoints/, simpo_report.json (train_metrics rewards/*, held_out
{start, sft|base, simpo, improved}) and simpo_loss_curve.png.
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


class SimpoKnobs(TypedDict):
    """train.simpo's loss."""

    beta: float
    """Scale of the reward (the answer's average log-probability)."""
    gamma: float
    """Target reward margin (TRL's simpo_gamma)."""


class SimpoParams(TypedDict):
    """Params of the simpo stage (train=simpo, sft_simpo)."""

    model: ModelParams
    lora: LoraParams | None
    quant: QuantParams
    train: TrainParams
    """sft's train, with learning_rate, epochs, max_steps and batch_size from train.simpo
    (learning_rate null: train.learning_rate / 25; batch_size null: train's)."""
    simpo: SimpoKnobs
    pairs: PairsParams
    distributed: NotRequired[DistributedParams]
    """Only when distributed is not none."""


def add_simpo(b: PlanBuilder, s: StageInputs) -> None:
    """Adds the simpo stage (train=simpo, sft_simpo): on the sft adapter, or a new one on the
    base."""
    t, o = s.cfg.train, s.cfg.train.simpo
    if "simpo" not in METHOD_STAGES[t.method]:
        return
    lr = o.learning_rate if o.learning_rate is not None else t.learning_rate / 25
    files: dict[str, str] = {}
    params: SimpoParams = {
        "model": s.model, "lora": s.lora, "quant": s.quant,
        "train": method_train(s.train, lr, o.epochs, o.max_steps, o.batch_size),
        "simpo": {"beta": o.beta, "gamma": o.gamma},
        "pairs": pairs_params(s.cfg.data, data_limits(s.cfg.limits), files)}
    sft = "sft" in METHOD_STAGES[t.method]
    start = "the sft adapter" if sft else "a new adapter on the base"
    steps = f"{o.max_steps} steps" if o.max_steps > 0 else f"{o.epochs:g} epochs"
    b.add("simpo", s.training(params), ["data", *(["sft"] if sft else []), *s.base],
          f"SimPO beta {o.beta:g} gamma {o.gamma:g} (no reference) from {start}, lr {lr:g}, "
          f"{steps}", files)
