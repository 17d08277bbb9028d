"""SFT stage and training backends: LoRA, full, resume, QLoRA, unsloth guard, backend choice."""

from __future__ import annotations

import importlib.util
import json
import logging

import pytest

from llmops.backends import get_backend
from llmops.errors import StageError
from llmops.planning.backend import resolve_backend

# A short LoRA r8 run on the tiny base (the overrides a user would type).
QUICK = (
    "lora=r8", "lora.dropout=0.0", "train.backend=hf", "train.learning_rate=3e-3",
    "train.epochs=1", "train.max_steps=12", "train.batch_size=8", "train.grad_accum=1",
    "train.max_length=256", "train.logging_steps=2", "train.save_steps=6",
)


def _run(params, tiny_base, sft_data, out, device="cpu"):
    from llmops.core.context import StageContext
    from llmops.stages import sft

    out.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(run_dir=out, device=device, show_progress=False,
                       logger=logging.getLogger("test.sft"))
    return sft.run(params, {"data": sft_data, "base": tiny_base}, out, ctx)


def test_lora_sft_trains_saves_a_loadable_adapter_and_resumes_from_its_latest_checkpoint(
        tiny_base, sft_data, tmp_path, stage_params):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "sft"
    report = _run(stage_params("sft", *QUICK), tiny_base, sft_data, out)
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

    # A rerun with more steps resumes from the latest checkpoint (12), as the runner sets it.
    params = stage_params("sft", *QUICK, "train.max_steps=16")
    params["train"]["resume_dir"] = str(out)
    second = _run(params, tiny_base, sft_data, tmp_path / "resumed")
    assert second["resumed_from_step"] == 12
    assert second["resumed_from"].endswith("checkpoint-12")
    assert second["steps"] == 16


def test_full_fine_tune_without_lora_saves_a_model(tiny_base, sft_data, tmp_path, stage_params):
    from transformers import AutoModelForCausalLM

    params = stage_params("sft", *QUICK, "lora=none", "train.max_steps=4")
    report = _run(params, tiny_base, sft_data, tmp_path / "full")
    assert report["artifact"] == "model"
    assert report["trainable_params"] == report["total_params"]
    AutoModelForCausalLM.from_pretrained(tmp_path / "full" / "model")


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes")
def test_qlora_nf4_trains_a_few_steps_on_cpu(tiny_base, sft_data, tmp_path, stage_params):
    params = stage_params("sft", *QUICK, "quant=nf4", "train.max_steps=3", "train.save_steps=3")
    report = _run(params, tiny_base, sft_data, tmp_path / "q")
    assert report["quant"] == "nf4" and report["steps"] == 3
    assert (tmp_path / "q" / "adapter" / "adapter_model.safetensors").is_file()


def test_unsloth_backend_explains_what_it_needs_on_cpu(tiny_base, sft_data, tmp_path, stage_params):
    params = stage_params("sft", *QUICK)
    params["train"]["backend"] = "unsloth"  # the config refuses it here; the stage must too
    with pytest.raises(StageError) as err:
        _run(params, tiny_base, sft_data, tmp_path / "u")
    assert "train.backend=unsloth needs a CUDA GPU and `pip install llmops[unsloth]`" in str(
        err.value
    )
    assert "use train.backend=hf" in str(err.value)


def test_sft_without_data_input_is_a_stage_error(tmp_path, stage_params):
    from llmops.core.context import StageContext
    from llmops.stages import sft

    with pytest.raises(StageError, match="sft: no 'data' input"):
        sft.run(stage_params("sft", *QUICK), {}, tmp_path,
                StageContext(run_dir=tmp_path, show_progress=False))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["hf", "unsloth"])
def test_lora_sft_on_cuda_keeps_a_fractional_alpha(backend, tiny_base, sft_data, tmp_path,
                                                    stage_params):
    from peft import PeftConfig

    if backend == "unsloth" and importlib.util.find_spec("unsloth") is None:
        pytest.skip("needs unsloth: pip install -e '.[unsloth]'")
    params = stage_params("sft", *QUICK, f"train.backend={backend}", "lora.r=4", "lora.alpha=0.5",
                          "train.max_steps=4", hardware="auto")
    report = _run(params, tiny_base, sft_data, tmp_path / backend, device="cuda")
    assert report["backend"] == backend and report["device"] == "cuda"
    assert report["steps"] == 4 and report["peak_memory_mb"] > 0
    assert PeftConfig.from_pretrained(str(tmp_path / backend / "adapter")).lora_alpha == 0.5


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
    with pytest.raises(ValueError,
                       match=r"train.backend: 'tpu' is not one of auto, hf, unsloth, openai"):
        resolve_backend("tpu", False)
    with pytest.raises(StageError, match="unknown train.backend 'auto'"):
        get_backend("auto")


def test_rows_longer_than_train_max_length_stop_sft_before_training(real_model, tmp_path,
                                                                    stage_params):
    """A real template puts the tool schemas in the prompt (Qwen2.5: ~740 tokens per bundled
    row): rows that pass data.max_length=1024 would be cut at train.max_length=512, their tool
    calls (all the loss) included. The sft stage refuses them, naming the length that fits."""
    from transformers import AutoTokenizer

    from llmops.backends.hf import load_datasets
    from llmops.data import task_api
    from llmops.files import write_jsonl

    folder = real_model("qwen2")
    write_jsonl(tmp_path / "train.jsonl", task_api.generate(3, seed=0))
    params = stage_params("sft", "model=hub", f"model.hub_id={folder}", "data.max_length=1024",
                          "train.max_length=512")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    with pytest.raises(StageError, match=r"sft: \d of 3 train rows are longer than "
                                         r"train.max_length=512 tokens .* Use train.max_length="
                                         r"7\d\d or more"):
        load_datasets(tmp_path, tokenizer, params)
    _, _, info = load_datasets(tmp_path, tokenizer, {**params, "train": {
        **params["train"], "max_length": 1024}})
    assert info["mask"] == "trl_training_template" and 0 < info["loss_tokens"] < info["tokens"]


def test_sft_trains_only_desirable_rows_and_counts_the_undesirable_it_leaves_out(
        tmp_path, stage_params):
    """Rows labelled undesirable (label: false, for KTO) are in train.jsonl; sft never makes them
    its targets, and says how many it left out."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from llmops.backends.hf import load_datasets
    from llmops.config.templates import template_text
    from llmops.files import write_jsonl

    def row(i: int, label: bool | None) -> dict:
        out = {"messages": [{"role": "user", "content": f"Question {i}?"},
                            {"role": "assistant", "content": f"Answer {i}."}]}
        return out if label is None else {**out, "label": label}

    write_jsonl(tmp_path / "train.jsonl", [row(0, True), row(1, False), row(2, None),
                                           row(3, False), row(4, True)])
    write_jsonl(tmp_path / "val.jsonl", [row(5, False), row(6, True)])
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(["Question Answer <|im_start|> <|im_end|> user assistant"] * 4,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<unk>")
    tok.chat_template = template_text("qwen2_5", None)
    train, val, info = load_datasets(tmp_path, tok, stage_params("sft"))
    assert len(train) == 3 and len(val) == 1
    assert info["left_out_undesirable"] == 2
    texts = [tok.decode(ids) for ids in train["input_ids"]]
    assert not any("Answer 1." in t or "Answer 3." in t for t in texts)


# The loss curve drawn in a fresh interpreter (the test worker may hold pyplot already): the
# stage's way (a Figure on an Agg canvas) imports no pyplot and draws the PNG pyplot draws.
_PLOT_PROBE = r"""
import json, sys
from pathlib import Path
from llmops.backends.hf import plot_loss_curve

out = Path(sys.argv[1])
curve = [{"step": s, "loss": 3.0 / s} for s in range(1, 21)]
drawn = plot_loss_curve(curve, out / "stage.png", "sft (hf, adapter)")
pyplot_loaded = "matplotlib.pyplot" in sys.modules
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot([p["step"] for p in curve], [p["loss"] for p in curve], marker=".")
ax.set_xlabel("step")
ax.set_ylabel("training loss")
ax.set_title("sft (hf, adapter)")
ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig(out / "pyplot.png", dpi=100)
print(json.dumps({"drawn": drawn, "pyplot_loaded": pyplot_loaded,
                  "same": (out / "stage.png").read_bytes() == (out / "pyplot.png").read_bytes()}))
"""


def test_the_loss_curve_is_drawn_without_pyplot_as_pyplot_draws_it(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _PLOT_PROBE, str(tmp_path)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {
        "drawn": True, "pyplot_loaded": False, "same": True}
    assert (tmp_path / "stage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
