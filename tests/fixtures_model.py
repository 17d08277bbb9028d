"""Builds the tiny base model and a small Task-API data folder once per test session.

Import the fixtures into a test module (`from fixtures_model import tiny_base, sft_data`); the
build is cached at module level so every module shares one copy. The lead may move these into
conftest.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

# A quick pre-training: the tests check mechanics, not accuracy.
TEST_PRETRAIN = {"n_examples": 200, "steps": 30, "batch_size": 8, "learning_rate": 3e-3, "seed": 0}
_CACHE: dict[str, Path] = {}


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """Returns the folder of a tiny base model built by the base stage (once per session)."""
    if "base" not in _CACHE:
        from llmops.stages import base
        from llmops.stages.context import StageContext

        out = tmp_path_factory.mktemp("tiny_base")
        ctx = StageContext(run_dir=out, show_progress=False, logger=logging.getLogger("test"))
        base.run({"pretrain": TEST_PRETRAIN}, {}, out, ctx)
        _CACHE["base"] = out
    return _CACHE["base"]


@pytest.fixture(scope="session")
def sft_data(tmp_path_factory) -> Path:
    """Returns a data folder (train.jsonl 160 rows, val.jsonl 16 rows, all tools)."""
    if "data" not in _CACHE:
        from llmops.data import task_api
        from llmops.stages.common import write_jsonl

        out = tmp_path_factory.mktemp("sft_data")
        rows = task_api.generate(176, seed=3)
        write_jsonl(out / "train.jsonl", rows[:160])
        write_jsonl(out / "val.jsonl", rows[160:])
        _CACHE["data"] = out
    return _CACHE["data"]


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
