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
