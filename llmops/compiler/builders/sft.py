"""The sft stage's params and builder: LoRA, QLoRA or full fine-tuning. Pure.

The stage writes adapter/ (LoRA) or model/ (full), checkpoints/, training_report.json and
loss_curve.png; its inputs are {"data"} plus {"base"} for the tiny model.
"""

from typing import Literal, cast

from typing_extensions import NotRequired, TypedDict

from llmops.compiler.builders.common import (
    DistributedParams,
    LoraParams,
    ModelParams,
    OpenAIJobParams,
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
    openai: NotRequired[OpenAIJobParams]
    """Only with train.backend=openai: the fine-tuning job OpenAI's API runs (llmops.backends.
    openai_ft); lora, quant and the local schedule are not used then."""


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
    if s.resolved.backend == "openai":
        _add_openai_sft(b, s, params)
        return
    b.add("sft", s.training(params),
          ["data", *s.base],
          f"{adapter}{qtxt}, lr {t.learning_rate:g}, {steps}, batch {s.train['batch_size']}x"
          f"{s.train['grad_accum']}, {s.resolved.backend} on {s.resolved.device}"
          f"{procs_text(s.distributed)}")


def _add_openai_sft(b: PlanBuilder, s: StageInputs, params: SftParams) -> None:
    """Adds the sft stage of train.backend=openai: its plan line says what would be uploaded
    (files, rows, tokens and how they were counted, cost against the cap)."""
    from llmops.config.rules.openai_ft import upload_estimate

    o, t = s.cfg.train.openai, s.cfg.train
    job = o.model_dump(exclude={"api_seconds_per_1k_tokens", "queue_minutes"})
    params["openai"] = cast(OpenAIJobParams, {
        **job, "epochs": float(o.n_epochs) if o.n_epochs != "auto" else float(t.epochs),
        "on_error": s.cfg.data.on_error})
    est = upload_estimate(s.cfg)
    rows = f"{est['train_rows']} + {est['val_rows']} rows" if est["train_rows"] is not None \
        else "rows known after the data stage"
    cost = f"~${est['cost_usd']:,.2f}" if est["cost_usd"] is not None else "cost checked at run"
    tokens = f"~{est['train_tokens']:,} tokens x {est['epochs']:g} epochs" \
        if est["train_tokens"] is not None else "tokens counted at run"
    consent = "" if o.upload_consent else "; NOT consented (train.openai.upload_consent=false)"
    b.add("sft", params, ["data", *s.base],
          f"OpenAI fine-tuning of {o.model}: upload {' + '.join(est['files'])} ({rows}), "
          f"{tokens} ({est['token_count']}), {cost} of the ${o.max_cost_usd:g} cap{consent}")
