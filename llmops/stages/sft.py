"""Stage `sft`: supervised fine-tuning (LoRA, QLoRA or full) through the chosen training backend.

Writes adapter/ (LoRA) or model/ (full), checkpoints/, training_report.json and loss_curve.png.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmops.compiler.plan import report_name
from llmops.stages.context import StageContext

REPORT_NAME = report_name("sft")
# The runner gives this stage a stable work folder per fingerprint and, when an interrupted
# attempt left a checkpoint there, sets params["train"]["resume_dir"] to it.
RESUMABLE = True


def run(
    params: dict[str, Any], inputs: dict[str, Path], out_dir: Path, ctx: StageContext
) -> dict[str, Any]:
    """Fine-tunes the base model on the data stage's train.jsonl; returns the training report.

    Args:
        params: {"model", "lora", "quant", "train"} (see PARAMS.md); train.backend is resolved.
        inputs: {"data": Path} plus {"base": Path} for the tiny model.
        out_dir: The stage's output folder.
        ctx: Run context.

    Raises:
        StageError: When the data input is missing, or the backend cannot run here.
    """
    from llmops.backends import get_backend
    from llmops.errors import StageError
    from llmops.stages.common import base_model_path, set_seed

    if "data" not in inputs:
        raise StageError("sft: no 'data' input. The plan must run the data stage before sft.")
    train = params.get("train") or {}
    backend_name = str(train.get("backend", "hf"))  # resolved by the compiler; never "auto"
    set_seed(int(train.get("seed", ctx.seed)))
    base = base_model_path(params, inputs)
    ctx.logger.info(
        "sft: backend=%s base=%s lora=%s quant=%s",
        backend_name,
        base,
        "r{}".format(params["lora"]["r"]) if params.get("lora") else "none",
        (params.get("quant") or {}).get("type", "none"),
    )
    backend = get_backend(backend_name)
    return backend.train_sft(params, Path(inputs["data"]), base, Path(out_dir), ctx)
