"""Where llama.cpp's HF -> GGUF converter is, at the pinned llama-cpp-python version.

`python -m llmops.gguf_setup` unpacks it once (see that command); the gguf stage only looks the
folder up here and names the command when it is missing. Nothing is downloaded when a plan runs.
"""

from __future__ import annotations

import os
from pathlib import Path

from llmops.errors import StageError

#: The llama-cpp-python release whose llama.cpp converts and serves; keep equal to setup.cfg's pin.
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
SETUP_COMMAND = "python -m llmops.gguf_setup"
MARKER = "llmops_gguf_setup.json"
#: Vocab-only GGUF files unpacked beside the converter (under models/), for offline tests.
VOCAB_FILES = ("ggml-vocab-qwen2.gguf", "ggml-vocab-llama-bpe.gguf", "ggml-vocab-phi-3.gguf")


def cache_root() -> Path:
    """Returns the folder holding unpacked converters ($LLMOPS_CACHE or ~/.cache/llmops)."""
    return Path(os.environ.get("LLMOPS_CACHE") or Path.home() / ".cache" / "llmops").expanduser()


def converter_dir(version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    """Returns where the converter of a llama-cpp-python version is (or would be) unpacked."""
    return cache_root() / f"llama.cpp-{version}"


def require_converter(version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    """Returns the unpacked converter folder.

    Raises:
        StageError: If the converter or llama-cpp-python is missing, naming the command to run.
    """
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        raise StageError(
            "gguf: llama-cpp-python is not installed. pip install 'llmops[gguf]' "
            f"(builds llama.cpp, ~7 min on 2 cores), then {SETUP_COMMAND}."
        )
    folder = converter_dir(version)
    if not (folder / MARKER).is_file() or not (folder / "convert_hf_to_gguf.py").is_file():
        raise StageError(
            f"gguf: llama.cpp's converter (llama-cpp-python {version}) is not set up in {folder}. "
            f"Run: {SETUP_COMMAND}"
        )
    return folder
