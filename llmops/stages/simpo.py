"""Stage `simpo`: SimPO on a LoRA adapter, no reference model (TRL's CPOTrainer, SimPO loss).

Starts from the sft stage's adapter (train=sft_simpo) or a new adapter on the base (train=simpo),
on the preference pairs dpo reads (``llmops.stages.pairs``). Writes pairs/ (derived or read
pairs), adapter/, checkpoints/, simpo_report.json (TRL's metrics, held-out preference accuracy /
margin before vs after) and simpo_loss_curve.png.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmops.compiler.builders.simpo import SimpoParams
from llmops.core.context import StageContext
from llmops.core.plan import report_name

REPORT_NAME = report_name("simpo")
# Like sft (the stage table's `resumable`): the runner resumes an interrupted attempt from its
# checkpoint (resume_dir).


def run(params: SimpoParams, inputs: dict[str, Path], out_dir: Path, ctx: StageContext
        ) -> dict[str, Any]:
    """Trains the adapter with SimPO on the preference pairs; returns the report.

    Args:
        params: ``SimpoParams``.
        inputs: {"data"}, plus {"sft"} for sft_simpo and {"base"} for the tiny model.
        out_dir: The stage's output folder.
        ctx: Run context.

    Raises:
        StageError: When the data input or the SFT adapter is missing, there are no pairs, or a
            rank fails.
    """
    from llmops.backends.launch import run_stage

    return run_stage("simpo", train, REPORT_NAME, params, inputs, out_dir, ctx)


def train(params: SimpoParams, inputs: dict[str, Path], out_dir: Path, ctx: StageContext
          ) -> dict[str, Any]:
    """Trains in this process (the only one, or one rank of a launched job); see `run`."""
    from llmops.stages.common import train_on_pairs

    return train_on_pairs("simpo", dict(params), inputs, out_dir, ctx)
