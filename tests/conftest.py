"""Shared fixtures: config composition, compiled stage params, and the tiny model and data built
once per session.

Stage tests take their params from a compiled plan (`stage_params`), so they exercise exactly what
a run passes and restate no default. Tests marked `gpu` skip cleanly when torch sees no CUDA GPU
(`python -m pytest -m gpu` selects them).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
SAMPLE_JSONL = REPO / "llmops" / "data" / "samples" / "tasks_chat.jsonl"

# A quick pre-training of the tiny base: the tests check mechanics, not accuracy.
QUICK_PRETRAIN = (
    "model.pretrain.n_examples=200", "model.pretrain.steps=30", "model.pretrain.batch_size=8",
    "model.pretrain.learning_rate=3e-3", "model.pretrain.legacy_tools=[]",
)


def _compile(overrides: list[str]):
    from llmops.cli import to_plain
    from llmops.compiler.compile import compile_plan
    from llmops.config.hydra.compose import compose
    from llmops.config.validate import validate_and_resolve

    cfg, resolved = validate_and_resolve(to_plain(compose(overrides)))
    return cfg, compile_plan(cfg, resolved)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skips tests marked `gpu` unless torch sees a CUDA GPU (torch is imported only then)."""
    if item.get_closest_marker("gpu") is None:
        return
    import torch

    if not torch.cuda.is_available():
        pytest.skip("gpu test: torch.cuda.is_available() is False on this machine")


@pytest.fixture
def compose_plan():
    """Returns a function: overrides -> (validated AppConfig, Plan)."""
    return _compile


@pytest.fixture(scope="session")
def stage_params() -> Callable[..., dict[str, Any]]:
    """Returns a function: (stage, *overrides, hardware="cpu") -> that stage's compiled params.

    The params are a deep copy, so a test may add keys (e.g. train.resume_dir) or break them.
    """

    def _params(stage: str, *overrides: str, hardware: str = "cpu") -> dict[str, Any]:
        _, plan = _compile([f"hardware={hardware}", *overrides])
        return copy.deepcopy(plan.stage(stage).params)

    return _params


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, stage_params) -> Path:
    """Returns the folder of a tiny base model built by the base stage from compiled params."""
    from llmops.core.context import StageContext
    from llmops.stages import tiny_base as base_stage

    out = tmp_path_factory.mktemp("tiny_base")
    ctx = StageContext(run_dir=out, show_progress=False, logger=logging.getLogger("test"))
    base_stage.run(stage_params("base", *QUICK_PRETRAIN), {}, out, ctx)
    return out


@pytest.fixture(scope="session")
def sft_data(tmp_path_factory) -> Path:
    """Returns a data folder (train.jsonl 160 rows, val.jsonl 16 rows, all tools)."""
    from llmops.data import task_api
    from llmops.files import write_jsonl

    out = tmp_path_factory.mktemp("sft_data")
    rows = task_api.generate(176, seed=3)
    write_jsonl(out / "train.jsonl", rows[:160])
    write_jsonl(out / "val.jsonl", rows[160:])
    return out


@pytest.fixture(scope="session")
def real_model(request) -> Callable[[str], Path]:
    """Returns a function: family ("qwen2" | "llama") -> a small saved HF model folder on that
    family's real vocabulary and chat template (tests/real_models.py).

    The folders are cached in .pytest_cache/d/real-models, so only the first session
    pays the ~15 s per family of converting a GGUF vocab. Without `python -m llmops.gguf_setup` the
    test skips with that command as the reason, unless LLMOPS_REQUIRE_GGUF=1 (CI), where it fails.
    """
    from real_models import build_real_model, vocab_path

    cache = Path(request.config.cache.mkdir("real-models"))

    def _get(family: str) -> Path:
        if vocab_path(family) is None:
            reason = f"{family} vocab GGUF not set up; run: python -m llmops.gguf_setup"
            if os.environ.get("LLMOPS_REQUIRE_GGUF") == "1":
                pytest.fail(reason)
            pytest.skip(reason)
        return build_real_model(family, cache)

    return _get


@pytest.fixture(scope="session")
def chain_run(tmp_path_factory) -> dict[str, Path]:
    """Runs issue 15's whole chain once, `python -m llmops deploy=openai monitor=default
    release=default` on the tiny default in a fresh folder and store; returns its folders (root,
    store, run). The monitor and release tests share it (one pipeline, not two)."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("chain_run")
    store = root / "store"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
           "LLMOPS_STORE": str(store)}
    r = subprocess.run([sys.executable, "-m", "llmops", "deploy=openai", "monitor=default",
                        "release=default"], cwd=root, env=env, capture_output=True, text=True,
                       timeout=1800)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return {"root": root, "store": store, "run": next(root.glob("outputs/runs/*/*"))}
