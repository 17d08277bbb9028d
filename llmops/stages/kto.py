"""Stage `kto`: KTO on binary feedback, a LoRA adapter (TRL KTOTrainer).

Starts from the sft stage's adapter (train=sft_kto) or a new adapter on the base (train=kto).
Trains on the data stage's rows labelled desirable / undesirable, else on the preference pairs
unpaired (``llmops.backends.kto``); refuses (exit 5) feedback without both kinds before loading
a model. Writes pairs/ (held-out pairs), adapter/, checkpoints/, kto_report.json and
kto_loss_curve.png.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmops.compiler.builders.kto import KtoParams
from llmops.core.context import StageContext
from llmops.core.plan import report_name

REPORT_NAME = report_name("kto")
# Like sft (the stage table's `resumable`): the runner resumes an interrupted attempt from its
# checkpoint (resume_dir).


def run(params: KtoParams, inputs: dict[str, Path], out_dir: Path, ctx: StageContext
        ) -> dict[str, Any]:
    """Trains the adapter with KTO; returns the report.

    Args:
        params: ``KtoParams``.
        inputs: {"data"}, plus {"sft"} for sft_kto and {"base"} for the tiny model.
        out_dir: The stage's output folder.
        ctx: Run context.

    Raises:
        DataRejected: When the feedback holds no desirable or no undesirable row.
        StageError: When the data input or the SFT adapter is missing, or a rank fails.
    """
    from llmops.backends.launch import run_stage

    return run_stage("kto", train, REPORT_NAME, params, inputs, out_dir, ctx)


def train(params: KtoParams, inputs: dict[str, Path], out_dir: Path, ctx: StageContext
          ) -> dict[str, Any]:
    """Trains in this process (the only one, or one rank of a launched job); see `run`."""
    from llmops.backends.kto import train_kto
    from llmops.errors import StageError
    from llmops.stages import pairs
    from llmops.stages.common import base_model_path, set_seed

    if "data" not in inputs:
        raise StageError("kto: no 'data' input. The plan must run the data stage first.")
    init = None
    if inputs.get("sft") is not None:
        init = Path(inputs["sft"]) / "adapter"
        if not init.is_dir():
            raise StageError(f"kto: the sft stage left no adapter ({init}); KTO here trains a "
                             "LoRA adapter. Use lora=r16 with train=sft_kto.")
    set_seed(int(params["train"]["seed"]))
    base = base_model_path(params, inputs)
    ctx.logger.info("kto: base=%s start=%s beta=%s", base, init or "new adapter",
                    params["kto"]["beta"])
    pair_dir, section = pairs.prepare(params["pairs"], Path(inputs["data"]), Path(out_dir), ctx)
    return train_kto(params, Path(inputs["data"]), pair_dir, section, base, init, Path(out_dir),
                     ctx)
