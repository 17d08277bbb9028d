"""Stage `sft`: supervised fine-tuning (LoRA, QLoRA or full) through the chosen training backend.

Writes adapter/ (LoRA) or model/ (full), checkpoints/, training_report.json and loss_curve.png.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmops.compiler.builders.sft import SftParams
from llmops.core.context import StageContext
from llmops.core.plan import report_name

REPORT_NAME = report_name("sft")
# Resumable (the stage table's `resumable`): the runner gives this stage a stable work folder per
# fingerprint and, when an interrupted attempt left a checkpoint there, sets
# params["train"]["resume_dir"] to it. Without a checkpoint it keeps train.backend=openai's job
# file there (`work_keeps`: llmops.backends.openai_ft.JOB_FILE), so a rerun follows the job and
# pays once.


def run(
    params: SftParams, inputs: dict[str, Path], out_dir: Path, ctx: StageContext
) -> dict[str, Any]:
    """Fine-tunes the base model on the data stage's train.jsonl; returns the training report.

    One process, or `distributed.nproc_per_node` x `distributed.nnodes` ranks started through
    the launcher (llmops.backends.launch), each running `train`.

    Args:
        params: {"model", "lora", "quant", "train", "distributed"} as compiled (``SftParams``);
            train.backend is resolved by the compiler (hf or unsloth, never auto).
        inputs: {"data": Path} plus {"base": Path} for the tiny model.
        out_dir: The stage's output folder.
        ctx: Run context.

    Raises:
        StageError: When the data input is missing, the backend cannot run here, or a rank fails.
    """
    from llmops.backends.launch import run_stage

    return run_stage("sft", train, REPORT_NAME, params, inputs, out_dir, ctx)


def train(
    params: SftParams, inputs: dict[str, Path], out_dir: Path, ctx: StageContext
) -> dict[str, Any]:
    """Trains in this process (the only one, or one rank of a launched job); see `run`."""
    from llmops.backends import get_backend
    from llmops.errors import StageError
    from llmops.stages.common import base_model_path, set_seed

    if "data" not in inputs:
        raise StageError("sft: no 'data' input. The plan must run the data stage before sft.")
    train = params["train"]
    set_seed(int(train["seed"]))
    base = base_model_path(params, inputs)
    ctx.logger.info(
        "sft: backend=%s base=%s lora=%s quant=%s",
        train["backend"],
        base,
        "r{}".format(params["lora"]["r"]) if params["lora"] else "none",
        params["quant"]["type"],
    )
    backend = get_backend(train["backend"])
    return backend.train_sft(params, Path(inputs["data"]), base, Path(out_dir), ctx)
