"""Stage `base`: builds and pre-trains the tiny default model offline (model=tiny only).

The kind stays "base" (it is in every fingerprint); the stage table maps it to this module.

Writes a Hugging Face folder (config.json, model.safetensors, generation_config.json, tokenizer
files with the ChatML chat template) and base_report.json into out_dir.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmops.compiler.builders.base import BaseParams
from llmops.core.context import StageContext
from llmops.core.plan import report_name

REPORT_NAME = report_name("base")


def run(
    params: BaseParams, inputs: dict[str, Path], out_dir: Path, ctx: StageContext
) -> dict[str, Any]:
    """Builds the tiny base model from params.arch and pre-trains it per params.pretrain.

    Args:
        params: {"arch": {...}, "pretrain": {...}} as compiled from model=tiny (``BaseParams``).
        inputs: None needed.
        out_dir: The stage's output folder.
        ctx: Run context (logger, progress).

    Returns:
        The base report (arch, parameters, loss curve, steps, seconds), also in base_report.json.
    """
    from llmops.backends.tiny import build_tiny_base

    return build_tiny_base(
        out_dir,
        arch=params["arch"],
        pretrain_params=params["pretrain"],
        show_progress=ctx.show_progress,
        logger=ctx.logger,
    )
