"""Training backends behind one small interface.

Light at import time (no torch, transformers, trl, peft or unsloth): a backend's module is imported
by `get_backend`, through its own small loader, when a stage needs it. Which backend a run uses
(`train.backend=auto`) is decided once, by ``llmops.planning.backend``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from llmops.planning.backend import BACKENDS

if TYPE_CHECKING:
    from llmops.core.context import StageContext


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
            params: The sft stage params (``llmops.compiler.builders.sft.SftParams``).
            data_dir: The data stage folder (train.jsonl, val.jsonl).
            base_model: A local folder or hub id to load the base model and tokenizer from.
            out_dir: The stage's output folder.
            ctx: Run context (device, logger, progress).
        """
        ...


def get_backend(name: str) -> TrainingBackend:
    """Returns the backend object for a resolved backend name ("hf", "unsloth" or "openai").

    Raises:
        StageError: When name is not a known backend (e.g. "auto", which the compiler resolves).
    """
    if name not in BACKENDS:
        from llmops.errors import StageError

        raise StageError(
            f"sft: unknown train.backend {name!r}. Allowed: {', '.join(BACKENDS)} "
            "(auto is resolved by the compiler before the stage runs)."
        )
    return _LOADERS[name]()


def _hf() -> TrainingBackend:
    from llmops.backends.hf import BACKEND

    return BACKEND


def _unsloth() -> TrainingBackend:
    from llmops.backends.unsloth import BACKEND

    return BACKEND


def _openai() -> TrainingBackend:
    from llmops.backends.openai_ft import BACKEND

    return BACKEND


# One loader per name of the backend table (llmops.planning.backend.BACKENDS): each imports its
# backend's module (torch and the rest) only when a stage asks for it.
_LOADERS = {"hf": _hf, "unsloth": _unsloth, "openai": _openai}
