"""SFT stage and training backends: LoRA, full, resume, QLoRA, unsloth guard, backend choice."""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys

import pytest
from fixtures_model import sft_data, tiny_base  # noqa: F401  (session fixtures)

from llmops.backends import get_backend, resolve_backend
from llmops.errors import StageError

LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}


def _params(lora=LORA, quant="none", **train):
    base_train = {
        "backend": "hf",
        "learning_rate": 3e-3,
        "epochs": 1,
        "max_steps": 12,
        "batch_size": 8,
        "grad_accum": 1,
        "seed": 0,
        "max_length": 256,
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "lr_scheduler": "linear",
        "optimizer": "adamw_torch",
        "logging_steps": 2,
        "save_steps": 6,
        "save_total_limit": 2,
        "gradient_checkpointing": False,
        "assistant_only_loss": True,
        "precision": "fp32",
    }
    base_train.update(train)
    return {
        "model": {"name": "tiny", "hub_id": None},
        "lora": lora,
        "quant": {"type": quant, "double_quant": True, "compute_dtype": "float32"},
        "train": base_train,
    }


def _run(params, tiny_base, sft_data, out):  # noqa: F811
    from llmops.stages import sft
    from llmops.stages.context import StageContext

    out.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(run_dir=out, show_progress=False, logger=logging.getLogger("test.sft"))
    return sft.run(params, {"data": sft_data, "base": tiny_base}, out, ctx)


def test_lora_sft_trains_and_saves_a_loadable_adapter(tiny_base, sft_data, tmp_path):  # noqa: F811
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "sft"
    report = _run(_params(), tiny_base, sft_data, out)
    assert report == json.loads((out / "training_report.json").read_text())
    assert report["backend"] == "hf" and report["artifact"] == "adapter"
    assert report["steps"] == 12 and report["resumed_from_step"] == 0
    curve = report["loss_curve"]
    assert curve[0]["step"] == 1 and curve[-1]["step"] == 12
    assert curve[-1]["loss"] < curve[0]["loss"]
    assert 0 < report["trainable_params"] < report["total_params"]
    assert report["tokens_seen"] > 0 and report["tokens_per_s"] > 0
    assert report["peak_memory_mb"] > 0 and report["train_runtime_s"] > 0
    assert report["eval_loss"] is not None
    assert (out / "loss_curve.png").is_file()
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "adapter" / "tokenizer.json").is_file()
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*"))
    assert ckpts == ["checkpoint-12", "checkpoint-6"]
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_base), out / "adapter"
    )
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_resume_continues_from_the_latest_checkpoint(tiny_base, sft_data, tmp_path):  # noqa: F811
    first = _run(_params(max_steps=6, save_steps=3), tiny_base, sft_data, tmp_path / "a")
    assert first["steps"] == 6
    second = _run(
        _params(max_steps=10, save_steps=3, resume_dir=str(tmp_path / "a")),
        tiny_base,
        sft_data,
        tmp_path / "b",
    )
    assert second["resumed_from_step"] == 6
    assert second["resumed_from"].endswith("checkpoint-6")
    assert second["steps"] == 10


def test_full_fine_tune_without_lora_saves_a_model(tiny_base, sft_data, tmp_path):  # noqa: F811
    from transformers import AutoModelForCausalLM

    report = _run(_params(lora=None, max_steps=4), tiny_base, sft_data, tmp_path / "full")
    assert report["artifact"] == "model"
    assert report["trainable_params"] == report["total_params"]
    AutoModelForCausalLM.from_pretrained(tmp_path / "full" / "model")


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes")
def test_qlora_nf4_trains_a_few_steps_on_cpu(tiny_base, sft_data, tmp_path):  # noqa: F811
    report = _run(
        _params(quant="nf4", max_steps=3, save_steps=3), tiny_base, sft_data, tmp_path / "q"
    )
    assert report["quant"] == "nf4" and report["steps"] == 3
    assert (tmp_path / "q" / "adapter" / "adapter_model.safetensors").is_file()


def test_unsloth_backend_explains_what_it_needs_on_cpu(tiny_base, sft_data, tmp_path):  # noqa: F811
    with pytest.raises(StageError) as err:
        _run(_params(backend="unsloth"), tiny_base, sft_data, tmp_path / "u")
    assert "train.backend=unsloth needs a CUDA GPU and `pip install llmops[unsloth]`" in str(
        err.value
    )
    assert "use train.backend=hf" in str(err.value)


def test_sft_without_data_input_is_a_stage_error(tmp_path):
    from llmops.stages import sft
    from llmops.stages.context import StageContext

    with pytest.raises(StageError, match="sft: no 'data' input"):
        sft.run(_params(), {}, tmp_path, StageContext(run_dir=tmp_path, show_progress=False))


@pytest.mark.parametrize(
    ("requested", "cuda", "installed", "expected"),
    [
        ("auto", True, True, "unsloth"),
        ("auto", True, False, "hf"),
        ("auto", False, True, "hf"),
        ("auto", False, False, "hf"),
        ("hf", True, True, "hf"),
        ("unsloth", False, False, "unsloth"),
    ],
)
def test_resolve_backend(monkeypatch, requested, cuda, installed, expected):
    real = importlib.util.find_spec

    def fake(name, *a, **k):
        if name == "unsloth":
            return object() if installed else None
        return real(name, *a, **k)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    assert resolve_backend(requested, cuda) == expected


def test_resolve_backend_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"train.backend: 'tpu' is not one of auto, hf, unsloth"):
        resolve_backend("tpu", False)
    with pytest.raises(StageError, match="unknown train.backend 'auto'"):
        get_backend("auto")


def test_backends_package_imports_no_heavy_library():
    code = (
        "import sys, llmops.backends as b; b.resolve_backend('auto', True); "
        "heavy = ('torch', 'transformers', 'trl', 'peft', 'unsloth'); "
        "bad = [m for m in heavy if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
