"""Training backends behind one small interface, and how `train.backend=auto` is resolved.

This module is imported by the compiler, so it stays pure: no torch, transformers, trl, peft or
unsloth at import time, and `resolve_backend` only probes with `importlib.util.find_spec`.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from llmops.stages.context import StageContext

BACKENDS: dict[str, str] = {
    "hf": "llmops.backends.hf",
    "unsloth": "llmops.backends.unsloth",
}
CHOICES: tuple[str, ...] = ("auto", *BACKENDS)


class TrainingBackend(Protocol):
    """What a training backend offers: supervised fine-tuning into an output folder."""

    name: str

    def train_sft(
        self,
        params: dict[str, Any],
        data_dir: Path,
        base_model: str,
        out_dir: Path,
        ctx: StageContext,
    ) -> dict[str, Any]:
        """Fine-tunes base_model on data_dir/train.jsonl; writes adapter/ or model/, checkpoints/
        and training_report.json into out_dir; returns the report.

        Args:
            params: The sft stage params ({"model", "lora", "quant", "train"}; see PARAMS.md).
            data_dir: The data stage folder (train.jsonl, val.jsonl).
            base_model: A local folder or hub id to load the base model and tokenizer from.
            out_dir: The stage's output folder.
            ctx: Run context (device, logger, progress).
        """
        ...


def unsloth_available() -> bool:
    """Tells whether unsloth is installed, without importing it (importing needs a GPU)."""
    return importlib.util.find_spec("unsloth") is not None


def resolve_backend(requested: str, cuda_available: bool,
                    unsloth_installed: bool | None = None) -> str:
    """Resolves a train.backend value to a concrete backend name.

    Pure and fast: probes for unsloth with `find_spec` and never imports torch or unsloth. The
    compiler calls it once, through ``llmops.planning.resolve``; stages read the result.

    Args:
        requested: "auto", "hf" or "unsloth".
        cuda_available: Whether the target hardware has a CUDA GPU.
        unsloth_installed: Whether unsloth is installed (the Environment's probe); None probes.

    Returns:
        "unsloth" for auto when unsloth is installed and CUDA is available, otherwise "hf" for auto;
        an explicit "hf"/"unsloth" is returned as is (the unsloth backend checks its needs at run).

    Raises:
        ValueError: When requested is not one of auto, hf, unsloth.
    """
    if requested == "auto":
        if not cuda_available:
            return "hf"
        installed = unsloth_available() if unsloth_installed is None else unsloth_installed
        return "unsloth" if installed else "hf"
    if requested in BACKENDS:
        return requested
    raise ValueError(
        f"train.backend: {requested!r} is not one of {', '.join(CHOICES)}. "
        "Use train.backend=auto to pick unsloth on a CUDA GPU when installed, else hf."
    )


def get_backend(name: str) -> TrainingBackend:
    """Returns the backend object for a resolved backend name ("hf" or "unsloth").

    Raises:
        StageError: When name is not a known backend (e.g. "auto", which the compiler resolves).
    """
    if name not in BACKENDS:
        from llmops.errors import StageError

        raise StageError(
            f"sft: unknown train.backend {name!r}. Allowed: {', '.join(BACKENDS)} "
            "(auto is resolved by the compiler before the stage runs)."
        )
    module = importlib.import_module(BACKENDS[name])
    return module.BACKEND
