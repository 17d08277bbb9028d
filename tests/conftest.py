"""Shared fixtures: config composition, and the tiny model and data built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
SAMPLE_JSONL = REPO / "llmops" / "data" / "samples" / "tasks_chat.jsonl"


@pytest.fixture
def compose_plan():
    """Returns a function: overrides -> (validated AppConfig, Plan), with Hydra state cleared."""
    from llmops.cli import to_plain
    from llmops.compiler.compile import compile_plan
    from llmops.config.compose import compose
    from llmops.config.validate import validate_and_resolve

    def _compose(overrides: list[str]):
        cfg, resolved = validate_and_resolve(to_plain(compose(overrides)))
        return cfg, compile_plan(cfg, resolved)

    return _compose
