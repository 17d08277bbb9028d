"""Helpers the stages share: where the base model is, and seeding.

Light: nothing heavy at module level (numpy and torch are imported lazily, only when installed).
JSON and JSON lines are written and read through ``llmops.files``; torch's CPU threads are set by
``llmops.backends.common``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def base_model_path(params: Mapping[str, Any], inputs: Mapping[str, Path]) -> str:
    """Returns the model to load: the "base" input folder if present, else model.hub_id.

    Args:
        params: The stage params; `params["model"]["hub_id"]` is used when there is no base input.
        inputs: The stage inputs by upstream kind.

    Raises:
        StageError: When there is neither a "base" input nor a model.hub_id.
    """
    if inputs.get("base") is not None:
        return str(inputs["base"])
    hub_id = (params.get("model") or {}).get("hub_id")
    if not hub_id:
        from llmops.errors import StageError

        raise StageError(
            "base model: no 'base' input and model.hub_id is empty (None). "
            "Set model.hub_id, or use model=tiny so the plan builds the base model."
        )
    return str(hub_id)


def set_seed(seed: int) -> None:
    """Seeds Python, numpy (if installed) and torch (if already importable) for reproducibility."""
    random.seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:
        pass
    try:
        import torch

        torch.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)
    except ImportError:
        pass


def train_on_pairs(kind: str, params: dict[str, Any], inputs: Mapping[str, Path], out_dir: Path,
                   ctx: Any) -> dict[str, Any]:
    """Trains a reference-free preference stage (orpo, simpo) in this process: its pairs
    (``llmops.stages.pairs``), from the sft adapter when the plan trained one, else a new
    adapter on the base.

    Raises:
        StageError: When the data input or the sft adapter is missing.
    """
    from llmops.backends.reference_free import train_reference_free
    from llmops.errors import StageError
    from llmops.stages import pairs

    if "data" not in inputs:
        raise StageError(f"{kind}: no 'data' input. The plan must run the data stage first.")
    init = None
    if inputs.get("sft") is not None:
        init = Path(inputs["sft"]) / "adapter"
        if not init.is_dir():
            raise StageError(f"{kind}: the sft stage left no adapter ({init}); {kind} here "
                             f"trains a LoRA adapter. Use lora=r16 with train=sft_{kind}.")
    set_seed(int(params["train"]["seed"]))
    base = base_model_path(params, inputs)
    ctx.logger.info("%s: base=%s start=%s", kind, base, init or "new adapter")
    pair_dir, section = pairs.prepare(params["pairs"], Path(inputs["data"]), Path(out_dir), ctx)
    return train_reference_free(kind, params, pair_dir, section, base, init, Path(out_dir), ctx)


def export_tokenizer(merged: Path) -> Any:
    """Loads the tokenizer of an exported model folder for its chat template (deploy, monitor,
    release): the generic fast class where the folder has a tokenizer.json, which loads without
    AutoTokenizer's torch import (~3 CPU-s a job), else AutoTokenizer."""
    if (Path(merged) / "tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast as Tokenizer
    else:
        from transformers import AutoTokenizer as Tokenizer
    return Tokenizer.from_pretrained(str(merged))
