"""The `hf` training backend: transformers + peft + TRL's SFTTrainer (LoRA, QLoRA or full).

Also holds the pieces the unsloth backend reuses: dataset loading, SFTConfig construction, the
training run with its report, and saving the artifact.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from llmops.backends.common import peak_memory_mb
from llmops.backends.ranks import is_main_rank, launched, report_fields, trainer_args
from llmops.core.plan import report_name
from llmops.errors import StageError
from llmops.files import read_jsonl, write_json

REPORT_NAME = report_name("sft")
EVAL_LOSS_MAX_ROWS = 2000


def _check_lengths(train: list[dict[str, Any]], max_length: int) -> None:
    """Refuses rows longer than train.max_length: TRL would cut their ends, where the assistant's
    answer (and so all of its loss) sits.

    Raises:
        StageError: Naming the longest row, its length and the train.max_length that fits it.
    """
    lengths = [len(r["input_ids"]) for r in train]
    over = [i for i, n in enumerate(lengths) if n > max_length]
    if over:
        worst = max(over, key=lengths.__getitem__)
        raise StageError(
            f"sft: {len(over)} of {len(train)} train rows are longer than train.max_length="
            f"{max_length} tokens through the model's chat template (train row {worst + 1}: "
            f"{lengths[worst]} tokens); training would cut off their ends, the assistant's "
            f"answer included. Use train.max_length={lengths[worst]} or more (or a "
            f"data.max_length of at most {max_length}, so that the data stage rejects them).")


def load_datasets(data_dir: Path, tokenizer: Any, params: dict[str, Any]
                  ) -> tuple[Any, Any | None, dict[str, Any]]:
    """Loads train.jsonl (and val.jsonl if present) as tokenized `datasets.Dataset`s
    (`input_ids` + `assistant_masks`, which TRL's SFTTrainer turns into labels).

    Returns:
        (train, val or None, {"mask": how the loss mask was computed, "loss_tokens", "tokens",
        "reasoning": data.reasoning's train or context, reasoning in the loss or out of it}).

    Raises:
        StageError: When train.jsonl is missing or empty, or a row is longer than
            train.max_length.
        ConfigError: When the rows have tools or reasoning the template cannot render (exit 2).
    """
    from datasets import Dataset

    from llmops.backends.templates import (
        check_reasoning,
        check_tools,
        mask_method,
        training_tokens,
    )

    train_path = Path(data_dir) / "train.jsonl"
    if not train_path.is_file():
        raise StageError(
            f"sft: no training data at {train_path}. The data stage must write train.jsonl."
        )
    rows = read_jsonl(train_path)
    n_read = len(rows)
    rows = [r for r in rows if r.get("label") is not False]  # undesirable answers: KTO's only
    if not rows:
        raise StageError(f"sft: {train_path} has no rows to learn ({n_read} read, every one "
                         "labelled undesirable). Check data.n_examples / data.path / the labels.")
    check_tools(tokenizer, rows, params["model"]["chat_template"], "sft")
    check_reasoning(tokenizer, rows, params["model"]["chat_template"], "sft")
    method = mask_method(tokenizer)
    assistant_only = bool(params["train"]["assistant_only_loss"])
    reasoning = params.get("reasoning", "train")  # NotRequired: only context is compiled
    train = [training_tokens(tokenizer, r, method, assistant_only, reasoning) for r in rows]
    val_path = Path(data_dir) / "val.jsonl"
    val_rows = [r for r in (read_jsonl(val_path) if val_path.is_file() else [])
                if r.get("label") is not False][:EVAL_LOSS_MAX_ROWS]
    val = [training_tokens(tokenizer, r, method, assistant_only, reasoning) for r in val_rows]
    _check_lengths(train, int(params["train"]["max_length"]))
    info = {"mask": method[0] if assistant_only else "all_tokens",
            "left_out_undesirable": n_read - len(rows),
            "loss_tokens": sum(sum(r["assistant_masks"]) for r in train),
            "tokens": sum(len(r["input_ids"]) for r in train), "reasoning": reasoning}
    return Dataset.from_list(train), Dataset.from_list(val) if val else None, info


def find_resume_checkpoint(resume_from: str | Path | None) -> str | None:
    """Finds the latest `checkpoint-N` folder to resume from.

    Args:
        resume_from: A checkpoint-N folder, a folder holding checkpoint-N folders, or an earlier sft
            output folder (its checkpoints/ subfolder is searched). None or missing → None.
    """
    if not resume_from:
        return None
    from transformers.trainer_utils import get_last_checkpoint

    path = Path(resume_from)
    if not path.is_dir():
        return None
    if path.name.startswith("checkpoint-") and (path / "trainer_state.json").is_file():
        return str(path)
    for folder in (path / "checkpoints", path):
        if folder.is_dir():
            last = get_last_checkpoint(str(folder))
            if last and (Path(last) / "trainer_state.json").is_file():
                return last
    return None


def precision_flags(precision: str, device: str) -> dict[str, bool]:
    """Returns SFTConfig's bf16/fp16 flags for train.precision ("fp32", "bf16", "fp16").

    Raises:
        StageError: For fp16 on a CPU or an unknown precision.
    """
    if precision == "fp32":
        return {"bf16": False, "fp16": False}
    if precision == "bf16":
        return {"bf16": True, "fp16": False}
    if precision == "fp16":
        if device == "cpu":
            raise StageError(
                "sft: train.precision=fp16 needs a CUDA GPU (device is cpu). "
                "Use train.precision=fp32 (or bf16) on a CPU."
            )
        return {"bf16": False, "fp16": True}
    raise StageError(
        f"sft: train.precision {precision!r} is not one of fp32, bf16, fp16. "
        "Use train.precision=fp32."
    )


def trainer_kwargs(train: dict[str, Any], out_dir: Path, ctx: Any) -> dict[str, Any]:
    """Returns the TrainingArguments shared by the SFT and DPO configs (checkpoints, schedule,
    logging, seeds, device and precision), read from the compiled train params."""
    return dict(
        output_dir=str(Path(out_dir) / "checkpoints"),
        per_device_train_batch_size=int(train["batch_size"]),
        per_device_eval_batch_size=int(train["batch_size"]),
        gradient_accumulation_steps=int(train["grad_accum"]),
        learning_rate=float(train["learning_rate"]),
        num_train_epochs=float(train["epochs"]),
        max_steps=int(train["max_steps"]),
        warmup_steps=int(train["warmup_steps"]),
        weight_decay=float(train["weight_decay"]),
        lr_scheduler_type=str(train["lr_scheduler"]),
        optim=str(train["optimizer"]),
        logging_steps=int(train["logging_steps"]),
        logging_first_step=True,
        save_strategy="steps",
        save_steps=int(train["save_steps"]),
        save_total_limit=int(train["save_total_limit"]),
        eval_strategy="no",
        gradient_checkpointing=bool(train["gradient_checkpointing"]),
        max_length=int(train["max_length"]),
        seed=int(train["seed"]),
        data_seed=int(train["seed"]),
        use_cpu=ctx.device == "cpu",
        report_to=train.get("report_to", "none"),
        run_name=train.get("run_name"),
        disable_tqdm=not ctx.show_progress,
        dataloader_num_workers=0,
        **precision_flags(str(train["precision"]), ctx.device),
    )


def sft_config(params: dict[str, Any], out_dir: Path, ctx: Any) -> Any:
    """Builds TRL's SFTConfig from the sft params (checkpoints go to out_dir/checkpoints).

    The datasets come tokenized with their loss mask (``load_datasets``: train.assistant_only_loss
    is applied there), so TRL's own assistant_only_loss, which needs generation marks, stays off.
    """
    from trl import SFTConfig

    return SFTConfig(
        **trainer_kwargs(params["train"], out_dir, ctx),
        **trainer_args(params.get("distributed")),
        assistant_only_loss=False,
        include_num_input_tokens_seen="non_padding",
    )


def lora_config(lora: dict[str, Any] | None) -> Any:
    """Builds a peft LoraConfig from the compiled lora params, or returns None (full fine-tune).

    alpha stays a float: LoRA scales the update by alpha/r, so lora.alpha=0.5 must not become 0.
    """
    if not lora:
        return None
    from peft import LoraConfig

    from llmops.backends.common import adapter_kwargs

    target = lora["target_modules"]
    return LoraConfig(
        **adapter_kwargs(lora),
        target_modules=target if isinstance(target, str) else list(target),
        bias="none",
        task_type="CAUSAL_LM",
    )


def quantization_config(quant: dict[str, Any], stage: str) -> Any:
    """Builds the BitsAndBytesConfig for the compiled quant params (nf4/fp4 4-bit or int8), or None.

    The one builder for every stage that loads a quantized base (sft, dpo, eval).

    Args:
        quant: {"type", "double_quant", "compute_dtype"}; compute_dtype is resolved (never auto).
        stage: The stage name that errors start with.

    Raises:
        StageError: For an unknown quant.type or compute_dtype.
    """
    qtype = quant["type"]
    if qtype == "none":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if qtype in ("nf4", "fp4"):
        dtype_name = str(quant["compute_dtype"])
        if not isinstance(getattr(torch, dtype_name, None), torch.dtype):
            raise StageError(
                f"{stage}: quant.compute_dtype {dtype_name!r} is not a torch dtype. "
                "Use float32, bfloat16 or float16."
            )
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=qtype,
            bnb_4bit_use_double_quant=bool(quant["double_quant"]),
            bnb_4bit_compute_dtype=getattr(torch, dtype_name),
        )
    if qtype == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise StageError(
        f"{stage}: quant.type {qtype!r} is not one of none, nf4, fp4, int8. Use quant=none."
    )


def load_model(params: dict[str, Any], base_model: str, ctx: Any) -> tuple[Any, Any]:
    """Loads the base model (quantized if asked, prepared for k-bit training) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmops.backends.templates import use_template

    trust = bool(params["model"]["trust_remote_code"])
    tokenizer = AutoTokenizer.from_pretrained(base_model, trust_remote_code=trust)
    use_template(tokenizer, params["model"]["chat_template"], "sft")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    bnb = quantization_config(params["quant"], "sft")
    precision = str(params["train"]["precision"])
    # On a GPU: bf16 weights for bf16; for fp16 AMP a frozen base under LoRA can sit in fp16 (the
    # fp32 adapter is what the grad scaler sees), while a full fine-tune needs fp32 master weights.
    dtype = torch.float32
    if ctx.device != "cpu" and precision == "bf16":
        dtype = torch.bfloat16
    elif ctx.device != "cpu" and precision == "fp16" and params["lora"]:
        dtype = torch.float16
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust}
    if bnb is not None:
        if importlib_missing("bitsandbytes"):
            raise StageError(
                f"sft: quant.type={params['quant']['type']} needs bitsandbytes, which is not "
                "installed. `pip install bitsandbytes`, or use quant=none."
            )
        kwargs["quantization_config"] = bnb
        kwargs["device_map"] = "cpu" if ctx.device == "cpu" else {"": 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(base_model, **kwargs)
    except OSError as e:
        raise StageError(
            f"sft: cannot load base model {base_model!r} ({e}). "
            "Check model.hub_id or the base stage."
        ) from e
    if bnb is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=bool(params["train"]["gradient_checkpointing"]),
        )
    return model, tokenizer


def importlib_missing(name: str) -> bool:
    """Tells whether a package is not installed, without importing it."""
    import importlib.util

    return importlib.util.find_spec(name) is None


def set_cpu_threads(ctx: Any) -> None:
    """Sets torch's CPU threads for training to the run's ctx.threads (resolved once by
    llmops.config.resolve: 1 for a small model on a CPU); None keeps torch's default."""
    from llmops.backends.common import torch_threads

    if ctx.threads is not None:
        torch_threads(ctx.threads)


def count_params(model: Any) -> tuple[int, int]:
    """Returns (trainable, total) parameter counts (peft's count when it is a PeftModel)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
        return int(trainable), int(total)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return int(trainable), int(total)


def make_callbacks(ctx: Any, label: str = "sft") -> tuple[list[Any], dict[str, float]]:
    """Returns trainer callbacks that log progress to ctx.logger and note where a run started."""
    from transformers import TrainerCallback

    start: dict[str, float] = {"step": 0, "tokens": 0}

    class _Progress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            start["step"] = state.global_step
            start["tokens"] = state.num_input_tokens_seen

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                ctx.logger.info(
                    "%s: step %d/%d loss %.4f lr %.2e",
                    label,
                    state.global_step,
                    state.max_steps,
                    logs["loss"],
                    logs.get("learning_rate", 0.0),
                )

    return [_Progress()], start


def plot_loss_curve(curve: list[dict], path: Path, title: str) -> bool:
    """Saves the loss curve as a PNG (matplotlib, Agg); returns False if matplotlib is missing.

    Through matplotlib's object API (a Figure on an Agg canvas), not pyplot: no global figure
    manager or backend switch in the stage process, and none of pyplot's imports.
    """
    if not curve or importlib_missing("matplotlib"):
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot([p["step"] for p in curve], [p["loss"] for p in curve], marker=".")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def run_training(
    trainer: Any,
    tokenizer: Any,
    params: dict[str, Any],
    out_dir: Path,
    ctx: Any,
    backend: str,
    start: dict[str, float],
) -> dict[str, Any]:
    """Trains (resuming from train.resume_dir if it holds a checkpoint), saves, writes the report.

    Returns:
        The training report, also written to out_dir/training_report.json, with loss_curve.png.
    """
    out_dir = Path(out_dir)
    resume = find_resume_checkpoint(params["train"].get("resume_dir"))
    if resume:
        ctx.logger.info("sft: resuming from %s", resume)
    t0 = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    except KeyboardInterrupt:
        raise
    runtime = time.perf_counter() - t0
    state = trainer.state
    curve = [
        {
            "step": h["step"],
            "loss": round(float(h["loss"]), 5),
            "learning_rate": float(h.get("learning_rate", 0.0)),
        }
        for h in state.log_history
        if "loss" in h and "step" in h
    ]
    eval_loss = None
    if trainer.eval_dataset is not None:
        metrics = trainer.evaluate()
        eval_loss = metrics.get("eval_loss")
    is_lora = bool(params["lora"])
    artifact = "adapter" if is_lora else "model"
    art_dir = out_dir / artifact
    if not save_artifact(trainer, tokenizer, art_dir, is_lora):
        return {}
    trainable, total = count_params(trainer.model)
    tokens = int(state.num_input_tokens_seen - start.get("tokens", 0))
    final_loss = curve[-1]["loss"] if curve else result.training_loss
    report = {
        "backend": backend,
        "artifact": artifact,
        "artifact_dir": artifact,
        "base_model": params.get("_base_model"),
        "lora": params["lora"],
        "quant": params["quant"]["type"],
        "loss_curve": curve,
        "final_loss": final_loss,
        "train_loss_mean": float(result.training_loss),
        "eval_loss": None if eval_loss is None or math.isnan(eval_loss) else float(eval_loss),
        "train_runtime_s": round(runtime, 3),
        "tokens_seen": tokens,
        "tokens_per_s": round(tokens / runtime, 1) if runtime > 0 else None,
        "peak_memory_mb": peak_memory_mb(ctx.device),
        "trainable_params": trainable,
        "total_params": total,
        "trainable_fraction": round(trainable / total, 6) if total else None,
        "steps": int(state.global_step),
        "epochs": round(float(state.epoch or 0.0), 4),
        "resumed_from_step": int(start.get("step", 0)) if resume else 0,
        "resumed_from": resume,
        "device": ctx.device,
        "precision": params["train"]["precision"],
        "loss_mask": params.get("_mask"),
        **report_fields(params.get("distributed"), trainer),
    }
    if plot_loss_curve(curve, out_dir / "loss_curve.png", f"sft ({backend}, {artifact})"):
        report["loss_curve_png"] = "loss_curve.png"
    write_json(out_dir / REPORT_NAME, report)
    ctx.logger.info(
        "sft: %d steps in %.1fs, final loss %.4f, %s tokens/s -> %s/",
        report["steps"],
        runtime,
        final_loss or 0.0,
        report["tokens_per_s"],
        artifact,
    )
    return report


def save_artifact(trainer: Any, tokenizer: Any, art_dir: Path, is_lora: bool) -> bool:
    """Saves the trained adapter or model; returns whether this process goes on to report.

    Under a launcher every rank takes part in the trainer's save (FSDP gathers the shards) and
    only rank 0 writes files; the other ranks write no report.
    """
    if launched():
        trainer.save_model(str(art_dir))
        return is_main_rank()
    if is_lora:
        trainer.model.save_pretrained(str(art_dir))
    else:
        trainer.save_model(str(art_dir))
    tokenizer.save_pretrained(str(art_dir))
    return True


def sft_trainer(model: Any, tokenizer: Any, params: dict[str, Any], data_dir: Path,
                out_dir: Path, ctx: Any, peft_config: Any = None
                ) -> tuple[Any, dict[str, float], dict[str, Any]]:
    """Builds TRL's SFTTrainer on data_dir's rows, tokenized through the model's own template.

    Returns:
        (trainer, the progress callback's start marks, the mask info of ``load_datasets``).
    """
    from trl import SFTTrainer

    from llmops.backends.templates import use_template

    use_template(tokenizer, params["model"]["chat_template"], "sft")
    train_ds, val_ds, mask = load_datasets(data_dir, tokenizer, params)
    ctx.logger.info("sft: loss on %d of %d tokens (mask: %s)", mask["loss_tokens"],
                    mask["tokens"], mask["mask"])
    if mask["left_out_undesirable"]:
        ctx.logger.warning("sft: left out %d train rows labelled undesirable (label=false); sft "
                           "learns only desirable answers (KTO trains on both).",
                           mask["left_out_undesirable"])
    callbacks, start = make_callbacks(ctx)
    trainer = SFTTrainer(
        model=model,
        args=sft_config(params, out_dir, ctx),
        train_dataset=train_ds,
        eval_dataset=val_ds,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    return trainer, start, mask


def train_with_sft_trainer(model: Any, tokenizer: Any, params: dict[str, Any], base_model: str,
                           data_dir: Path, out_dir: Path, ctx: Any, backend: str,
                           peft_config: Any = None) -> dict[str, Any]:
    """Trains a loaded model with TRL's SFTTrainer on data_dir (shared by the hf and unsloth
    backends) and returns run_training's report, with the loss mask's method and counts."""
    trainer, start, mask = sft_trainer(model, tokenizer, params, data_dir, out_dir, ctx,
                                       peft_config)
    return run_training(trainer, tokenizer, {**params, "_base_model": base_model, "_mask": mask},
                        out_dir, ctx, backend, start)


class HFBackend:
    """Fine-tunes with transformers + peft + TRL SFTTrainer on CPU or GPU."""

    name = "hf"

    def train_sft(
        self, params: dict[str, Any], data_dir: Path, base_model: str, out_dir: Path, ctx: Any
    ) -> dict[str, Any]:
        """Fine-tunes base_model on data_dir with LoRA/QLoRA (or fully when lora is None).

        See `llmops.backends.TrainingBackend.train_sft`.
        """
        model, tokenizer = load_model(params, base_model, ctx)
        set_cpu_threads(ctx)
        return train_with_sft_trainer(model, tokenizer, params, base_model, data_dir, out_dir, ctx,
                                      self.name, peft_config=lora_config(params["lora"]))


BACKEND = HFBackend()
