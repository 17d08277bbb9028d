"""The kto stage's params and builder: KTO (Kahneman-Tversky optimisation) of a LoRA adapter on
binary feedback. Pure.

The stage trains on the data stage's rows labelled desirable / undesirable (``label``: the
canonical rows' column), or, when no row is labelled, on the preference pairs unpaired (chosen
desirable, rejected undesirable; ``llmops.stages.pairs``); held-out pairs score it as they score
dpo. Its inputs are {"data"}, plus {"sft"} for sft_kto and {"base"} for the tiny model. It writes
pairs/, adapter/, checkpoints/, kto_report.json (feedback counts, train_metrics, held_out {start,
sft|base, kto, improved}) and kto_loss_curve.png.
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


class KtoKnobs(TypedDict):
    """train.kto's loss."""

    beta: float
    """Strength of the pull towards the reference (the model KTO starts from)."""
    desirable_weight: float
    undesirable_weight: float


class KtoParams(TypedDict):
    """Params of the kto stage (train=kto, sft_kto)."""

    model: ModelParams
    lora: LoraParams | None
    quant: QuantParams
    train: TrainParams
    """sft's train, with learning_rate, epochs, max_steps and batch_size from train.kto
    (learning_rate null: train.learning_rate / 25; batch_size null: train's)."""
    kto: KtoKnobs
    pairs: PairsParams
    """The pairs held out for scoring, and trained on (unpaired) when no row is labelled."""
    distributed: NotRequired[DistributedParams]
    """Only when distributed is not none."""


def add_kto(b: PlanBuilder, s: StageInputs) -> None:
    """Adds the kto stage (train=kto, sft_kto): on the sft adapter, or a new one on the base."""
    t, k = s.cfg.train, s.cfg.train.kto
    if "kto" not in METHOD_STAGES[t.method]:
        return
    lr = k.learning_rate if k.learning_rate is not None else t.learning_rate / 25
    files: dict[str, str] = {}
    params: KtoParams = {
        "model": s.model, "lora": s.lora, "quant": s.quant,
        "train": method_train(s.train, lr, k.epochs, k.max_steps, k.batch_size),
        "kto": {"beta": k.beta, "desirable_weight": k.desirable_weight,
                "undesirable_weight": k.undesirable_weight},
        "pairs": pairs_params(s.cfg.data, data_limits(s.cfg.limits), files)}
    sft = "sft" in METHOD_STAGES[t.method]
    start = "the sft adapter" if sft else "a new adapter on the base"
    steps = f"{k.max_steps} steps" if k.max_steps > 0 else f"{k.epochs:g} epochs"
    b.add("kto", s.training(params), ["data", *(["sft"] if sft else []), *s.base],
          f"KTO beta {k.beta:g} on labelled rows (else pairs unpaired) from {start}, lr {lr:g}, "
          f"{steps}", files)
