"""Which training backend a run uses: the backend table and how `train.backend=auto` resolves.

Pure and fast: unsloth is probed with `importlib.util.find_spec`, never imported. The compiler
resolves the backend once, through ``llmops.config.resolve``; ``llmops.backends`` loads it.
"""

from __future__ import annotations

import importlib.util

BACKENDS: dict[str, str] = {
    "hf": "llmops.backends.hf",
    "unsloth": "llmops.backends.unsloth",
    "openai": "llmops.backends.openai_ft",
}
CHOICES: tuple[str, ...] = ("auto", *BACKENDS)


def unsloth_available() -> bool:
    """Tells whether unsloth is installed, without importing it (importing needs a GPU)."""
    return importlib.util.find_spec("unsloth") is not None


def resolve_backend(requested: str, cuda_available: bool,
                    unsloth_installed: bool | None = None) -> str:
    """Resolves a train.backend value to a concrete backend name.

    Pure and fast: probes for unsloth with `find_spec` and never imports torch or unsloth. The
    compiler calls it once, through ``llmops.config.resolve``; stages read the result.

    Args:
        requested: "auto", "hf", "unsloth" or "openai".
        cuda_available: Whether the target hardware has a CUDA GPU.
        unsloth_installed: Whether unsloth is installed (the Environment's probe); None probes.

    Returns:
        "unsloth" for auto when unsloth is installed and CUDA is available, otherwise "hf" for auto;
        an explicit "hf"/"unsloth" is returned as is (the unsloth backend checks its needs at run).

    Raises:
        ValueError: When requested is not one of auto, hf, unsloth, openai.
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
