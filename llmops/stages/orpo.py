"""Stage `orpo`: ORPO on a LoRA adapter, no reference model (TRL's trl.experimental.orpo).

Starts from the sft stage's adapter (train=sft_orpo) or a new adapter on the base (train=orpo),
on the preference pairs dpo reads (``llmops.stages.pairs``). Writes pairs/ (derived or read
pairs), adapter/, checkpoints/, orpo_report.json (TRL's metrics, held-out preference accuracy /
margin before vs after) and orpo_loss_curve.png.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmops.compiler.builders.orpo import OrpoParams
from llmops.core.context import StageContext
from llmops.core.plan import report_name

REPORT_NAME = report_name("orpo")
# Like sft (the stage table's `resumable`): the runner resumes an interrupted attempt from its
# checkpoint (resume_dir).


def run(params: OrpoParams, inputs: dict[str, Path], out_dir: Path, ctx: StageContext
        ) -> dict[str, Any]:
    """Trains the adapter with ORPO on the preference pairs; returns the report.

    Args:
        params: ``OrpoParams``.
        inputs: {"data"}, plus {"sft"} for sft_orpo and {"base"} for the tiny model.
        out_dir: The stage's output folder.
        ctx: Run context.

    Raises:
        StageError: When the data input or the SFT adapter is missing, there are no pairs, or a
            rank fails.
    """
    from llmops.backends.launch import run_stage

    return run_stage("orpo", train, REPORT_NAME, params, inputs, out_dir, ctx)


def train(params: OrpoParams, inputs: dict[str, Path], out_dir: Path, ctx: StageContext
          ) -> dict[str, Any]:
    """Trains in this process (the only one, or one rank of a launched job); see `run`."""
    from llmops.stages.common import train_on_pairs

    return train_on_pairs("orpo", dict(params), inputs, out_dir, ctx)
