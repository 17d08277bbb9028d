"""Stage `grpo`: GRPO on the SFT adapter, rewarded by llmops's scorers (TRL GRPOTrainer).

Prompts are the train split's tool-call and must-refuse rows through the model's own template;
completions are read in its call syntax as eval reads answers (``llmops.backends.grpo``).
Refuses data with no row a reward can check (exit 5) before a model loads. Writes adapter/,
checkpoints/, grpo_report.json and grpo_reward_curve.png.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmops.compiler.builders.grpo import GrpoParams
from llmops.core.context import StageContext
from llmops.core.plan import report_name

REPORT_NAME = report_name("grpo")
# Like sft (the stage table's `resumable`): the runner resumes an interrupted attempt from its
# checkpoint (resume_dir).


def run(params: GrpoParams, inputs: dict[str, Path], out_dir: Path, ctx: StageContext
        ) -> dict[str, Any]:
    """Trains the SFT adapter with GRPO; returns the report.

    Args:
        params: ``GrpoParams``.
        inputs: {"data", "sft"}, plus {"base"} for the tiny model.
        out_dir: The stage's output folder.
        ctx: Run context.

    Raises:
        DataRejected: When no train row has an answer a reward can check.
        StageError: When the data or the SFT adapter is missing, or a rank fails.
    """
    from llmops.backends.launch import run_stage

    return run_stage("grpo", train, REPORT_NAME, params, inputs, out_dir, ctx)


def train(params: GrpoParams, inputs: dict[str, Path], out_dir: Path, ctx: StageContext
          ) -> dict[str, Any]:
    """Trains in this process (the only one, or one rank of a launched job); see `run`."""
    from llmops.backends.grpo import train_grpo
    from llmops.errors import StageError
    from llmops.stages.common import base_model_path, set_seed

    if "data" not in inputs or inputs.get("sft") is None:
        raise StageError("grpo: needs the 'data' and 'sft' inputs (train=sft_grpo plans both).")
    init = Path(inputs["sft"]) / "adapter"
    if not init.is_dir():
        raise StageError(f"grpo: the sft stage left no adapter ({init}); GRPO here trains a "
                         "LoRA adapter. Use lora=r16 with train=sft_grpo.")
    set_seed(int(params["train"]["seed"]))
    base = base_model_path(params, inputs)
    ctx.logger.info("grpo: base=%s rewards=%s", base, params["grpo"]["rewards"])
    return train_grpo(dict(params), Path(inputs["data"]), base, init, Path(out_dir), ctx)
