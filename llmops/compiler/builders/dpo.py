"""The dpo stage's params and builder: direct preference optimisation of a LoRA adapter. Pure.

The stage reads preference pairs: the data stage's own when the data are pairs, else derived from
its splits or read from data.preference_path (``pairs``); its inputs are {"data"}, plus {"sft"}
for sft_dpo and {"base"} for the tiny model. It writes adapter/, checkpoints/, dpo_report.json
(train_metrics rewards/*, held_out {start, sft|base, dpo, improved}) and dpo_loss_curve.png.
A plan without dpo keeps its fingerprints: the stage is added only when the config asks for it.
"""

from pathlib import Path

from typing_extensions import NotRequired, TypedDict

from llmops.compiler.builders.common import (
    DistributedParams,
    LoraParams,
    ModelParams,
    QuantParams,
    TrainParams,
    adapter_files,
    method_train,
)
from llmops.compiler.builders.data import PairsParams, data_limits, pairs_params
from llmops.compiler.inputs import PlanBuilder, StageInputs
from llmops.core.plan import METHOD_STAGES


class DpoKnobs(TypedDict):
    """train.dpo's loss."""

    beta: float
    """Strength of the pull towards the reference model."""
    loss_type: str
    """sigmoid (the paper's), ipo, hinge or robust."""
    label_smoothing: float


class DpoParams(TypedDict):
    """Params of the dpo stage (train=dpo, sft_dpo)."""

    model: ModelParams
    lora: LoraParams | None
    quant: QuantParams
    train: TrainParams
    """sft's train, with learning_rate, epochs, max_steps and batch_size from train.dpo
    (learning_rate null: train.learning_rate / 25; batch_size null: train's)."""
    dpo: DpoKnobs
    init_adapter: str | None
    """train=dpo: the absolute adapter folder to start from; None: the sft adapter (sft_dpo) or
    a new adapter on the base."""
    pairs: PairsParams
    distributed: NotRequired[DistributedParams]
    """Only when distributed is not none."""


def add_dpo(b: PlanBuilder, s: StageInputs) -> None:
    """Adds the dpo stage (train=dpo, sft_dpo): on the sft adapter (sft_dpo), or on the base /
    train.dpo.init_adapter."""
    t, dpo = s.cfg.train, s.cfg.train.dpo
    if "dpo" not in METHOD_STAGES[t.method]:
        return
    lr = dpo.learning_rate if dpo.learning_rate is not None else t.learning_rate / 25
    dtrain = method_train(s.train, lr, dpo.epochs, dpo.max_steps, dpo.batch_size)
    files: dict[str, str] = {}
    init = None
    if t.method == "dpo" and dpo.init_adapter:
        init = str(Path(dpo.init_adapter).expanduser().resolve())
        files = adapter_files(init)
    params: DpoParams = {"model": s.model, "lora": s.lora, "quant": s.quant, "train": dtrain,
                         "dpo": {"beta": dpo.beta, "loss_type": dpo.loss_type,
                                 "label_smoothing": dpo.label_smoothing},
                         "init_adapter": init,
                         "pairs": pairs_params(s.cfg.data, data_limits(s.cfg.limits), files)}
    needs = ["data", *(["sft"] if t.method == "sft_dpo" else []), *s.base]
    start = "the sft adapter" if t.method == "sft_dpo" else (init or "a new adapter on the base")
    steps = f"{dpo.max_steps} steps" if dpo.max_steps > 0 else f"{dpo.epochs:g} epochs"
    b.add("dpo", s.training(params), needs,
          f"DPO beta {dpo.beta:g} ({dpo.loss_type}) from {start}, lr {lr:g}, {steps}", files)
