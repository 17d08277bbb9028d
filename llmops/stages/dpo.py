"""Stage `dpo`: direct preference optimisation on a LoRA adapter (TRL DPOTrainer).

Starts from the sft stage's adapter (train=sft_dpo), from train.dpo.init_adapter, or from a new
adapter on the base (train=dpo), on preference pairs (``llmops.stages.pairs``: the data's own,
derived from its splits, or data.preference_path). Writes pairs/ (derived or read pairs),
adapter/, checkpoints/, dpo_report.json (TRL's DPO metrics and held-out preference accuracy /
margin before vs after) and dpo_loss_curve.png.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmops.compiler.builders.dpo import DpoParams
from llmops.core.context import StageContext
from llmops.core.plan import report_name

REPORT_NAME = report_name("dpo")
# Like sft (the stage table's `resumable`): the runner gives this stage a stable work folder per
# fingerprint and, when an interrupted attempt left a checkpoint there, sets
# params["train"]["resume_dir"] to it.


def run(params: DpoParams, inputs: dict[str, Path], out_dir: Path, ctx: StageContext
        ) -> dict[str, Any]:
    """Trains the adapter with DPO on the data stage's preference pairs; returns the report.

    One process, or several ranks started through the launcher (llmops.backends.launch), each
    running `train`.

    Args:
        params: {"model", "lora", "quant", "train", "dpo", "init_adapter", "pairs", "distributed"}
            (``DpoParams``).
        inputs: {"data"}, plus {"sft"} for sft_dpo and {"base"} for the tiny model.
        out_dir: The stage's output folder.
        ctx: Run context.

    Raises:
        StageError: When the data input or the starting adapter is missing, or a rank fails.
    """
    from llmops.backends.launch import run_stage

    return run_stage("dpo", train, REPORT_NAME, params, inputs, out_dir, ctx)


def train(params: DpoParams, inputs: dict[str, Path], out_dir: Path, ctx: StageContext
          ) -> dict[str, Any]:
    """Trains in this process (the only one, or one rank of a launched job); see `run`."""
    from llmops.backends.dpo import train_dpo
    from llmops.errors import StageError
    from llmops.stages import pairs
    from llmops.stages.common import base_model_path, set_seed

    if "data" not in inputs:
        raise StageError("dpo: no 'data' input. The plan must run the data stage before dpo.")
    init = None
    if inputs.get("sft") is not None:
        init = Path(inputs["sft"]) / "adapter"
        if not init.is_dir():
            raise StageError(f"dpo: the sft stage left no adapter ({init}); DPO here trains a LoRA "
                             "adapter. Use lora=r16 with train=sft_dpo.")
    elif params["init_adapter"]:
        init = Path(params["init_adapter"])
        if not (init / "adapter_config.json").is_file():
            raise StageError(f"dpo: train.dpo.init_adapter {init} holds no adapter_config.json. "
                             "Point it at a PEFT adapter folder.")
    set_seed(int(params["train"]["seed"]))
    base = base_model_path(params, inputs)
    ctx.logger.info("dpo: base=%s start=%s beta=%s", base, init or "new adapter",
                    params["dpo"]["beta"])
    pair_dir, section = pairs.prepare(params["pairs"], Path(inputs["data"]), Path(out_dir), ctx)
    return train_dpo(params, pair_dir, section, base, init, Path(out_dir), ctx)
