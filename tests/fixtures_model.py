"""Test helpers that build model artifacts (the fixtures themselves live in conftest.py)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None


def gguf_ready() -> bool:
    """Tells whether llama-cpp-python is installed and `python -m llmops.gguf_setup` has run."""
    from llmops.serving.converter import converter_dir

    return HAS_LLAMA_CPP and (converter_dir() / "llmops_gguf_setup.json").is_file()


#: GGUF/serving tests skip without the gguf extra, unless LLMOPS_REQUIRE_GGUF=1 (CI), where they
#: run and fail instead.
needs_gguf = pytest.mark.skipif(
    os.environ.get("LLMOPS_REQUIRE_GGUF") != "1" and not gguf_ready(),
    reason="needs the gguf extra: pip install 'llmops[gguf]' && python -m llmops.gguf_setup",
)


def random_adapter(base: Path, folder: Path, seed: int, scale: float) -> Path:
    """Saves a real LoRA adapter (r4, all linear layers) on base with random non-zero lora_B, so it
    changes the outputs; the tokenizer is saved beside it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
    peft_model.save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(folder))
    return folder
