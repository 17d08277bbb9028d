"""The eval_base, eval and export stages on a real tiny model and a real LoRA adapter."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from fixtures_model import random_adapter

from llmops.backends.tiny import CHATML_TEMPLATE
from llmops.core.context import StageContext
from llmops.data import task_api

N_TEST = 24


def _build_tiny_base(folder: Path) -> None:
    """Builds a random (not pre-trained) tiny Llama with the project's tiny BPE tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llmops.backends.tiny import build_tokenizer, corpus_texts

    tok = build_tokenizer(corpus_texts(task_api.generate(300, seed=1)), 384, model_max_length=512)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Folders of a tiny base, a data split, an sft output with an adapter, and an eval_base run."""
    from llmops.files import write_jsonl

    root = tmp_path_factory.mktemp("tiny")
    base, data, sft = root / "base", root / "data", root / "sft"
    for d in (base, data, sft):
        d.mkdir()
    _build_tiny_base(base)
    write_jsonl(data / "test.jsonl", task_api.generate(N_TEST, seed=7))
    random_adapter(base, sft / "adapter", seed=1, scale=0.5)
    (sft / "training_report.json").write_text(json.dumps({"artifact": "adapter"}))
    return {"root": root, "base": base, "data": data, "sft": sft}


def _ctx(root: Path) -> StageContext:
    return StageContext(run_dir=root, logger=logging.getLogger("test"), show_progress=False)


def _params(**extra):
    params = {
        "model": {"name": "tiny", "hub_id": None, "chat_template": "chatml",
                  "trust_remote_code": False},
        "quant": {"type": "none"},
        "max_new_tokens": 12,
        "batch_size": 8,
        "token_budget": 4096,
        "logits_mb": 64.0,
        "limit": None,
        "worst_examples": 2,
        "gate_mode": "explicit",
        "confidence": 0.95,
        "gates": {
            "accuracy": {"metric": "exact_match", "threshold": 0.0, "direction": "min"},
            "format": {"metric": "json_valid_rate", "threshold": 0.9, "direction": "min"},
            "no_regression": {"metric": "exact_match", "tolerance": 0.0},
        },
        "enforce": True,
    }
    params.update(extra)
    return params


@pytest.fixture(scope="module")
def base_eval(tiny):
    from llmops.stages import eval_base

    out = tiny["root"] / "eval_base"
    out.mkdir()
    inputs = {"data": tiny["data"], "base": tiny["base"]}
    report = eval_base.run(_params(), inputs, out, _ctx(tiny["root"]))
    return out, report


def test_eval_base_writes_report(base_eval):
    out, report = base_eval
    on_disk = json.loads((out / "base_eval.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert set(report) == {"metrics", "by_kind", "stats", "n", "samples", "predictions",
                           "answer_syntax", "worst_examples", "seconds", "oom_retries",
                           "reasoning"}
    assert report["oom_retries"] == []
    assert report["answer_syntax"] == "task_api"  # the tiny model's own template's syntax
    assert report["n"] == N_TEST
    assert len(report["samples"]) == 20
    sample = report["samples"][0]
    assert sample["prompt"].endswith("<|im_start|>assistant\n")
    assert "<|im_end|>" not in sample["prediction"]


def test_eval_report_keys_and_gates(tiny, base_eval):
    from llmops.stages import eval as eval_stage

    out = tiny["root"] / "eval"
    out.mkdir()
    inputs = {
        "data": tiny["data"],
        "base": tiny["base"],
        "sft": tiny["sft"],
        "eval_base": base_eval[0],
    }
    report = eval_stage.run(_params(), inputs, out, _ctx(tiny["root"]))
    on_disk = json.loads((out / "eval_report.json").read_text())
    assert {"base", "tuned", "gates", "passed"} <= set(on_disk)
    assert on_disk["base"] == base_eval[1]["metrics"]
    assert on_disk["n"] == N_TEST and on_disk["artifact"] == "adapter"
    assert on_disk["samples"][0]["base_prediction"] == base_eval[1]["samples"][0]["prediction"]
    gates = {g["name"]: g for g in report["gates"]}
    tuned = report["tuned"]
    assert gates["accuracy"]["value"] == tuned["exact_match"]
    assert gates["accuracy"]["passed"] is True  # threshold 0.0 always holds
    assert gates["format"]["passed"] is (tuned["json_valid_rate"] >= 0.9)
    assert gates["no_regression"]["threshold"] == report["base"]["exact_match"]
    assert report["passed"] is all(g["passed"] for g in report["gates"])
    assert report["deltas"]["exact_match"] == pytest.approx(
        tuned["exact_match"] - report["base"]["exact_match"]
    )


def test_eval_failing_gate_is_reported_not_raised(tiny, base_eval, tmp_path):
    from llmops.stages import eval as eval_stage

    gates = {"impossible": {"metric": "exact_match", "threshold": 1.01}}
    inputs = {
        "data": tiny["data"],
        "base": tiny["base"],
        "sft": tiny["sft"],
        "eval_base": base_eval[0],
    }
    report = eval_stage.run(_params(gates=gates, limit=4), inputs, tmp_path, _ctx(tmp_path))
    assert report["passed"] is False
    assert report["gates"][0]["passed"] is False
    assert report["n"] == 4


def test_eval_full_finetune_without_eval_base(tiny, tmp_path):
    import shutil

    from llmops.stages import eval as eval_stage

    sft = tmp_path / "sft_full"
    shutil.copytree(tiny["base"], sft / "model")
    (sft / "training_report.json").write_text(json.dumps({"artifact": "model"}))
    inputs = {"data": tiny["data"], "base": tiny["base"], "sft": sft}
    report = eval_stage.run(_params(limit=4, max_new_tokens=4), inputs, tmp_path, _ctx(tmp_path))
    assert report["artifact"] == "model"
    assert report["tuned"] == report["base"]  # same weights, evaluated the same way
    assert report["passed"] is (report["tuned"]["json_valid_rate"] >= 0.9)


def test_eval_without_sft_output_raises(tiny, tmp_path):
    from llmops.errors import StageError
    from llmops.stages import eval as eval_stage

    empty = tmp_path / "sft"
    empty.mkdir()
    inputs = {"data": tiny["data"], "base": tiny["base"], "sft": empty}
    with pytest.raises(StageError, match="holds neither adapter/ nor model/"):
        eval_stage.run(_params(), inputs, tmp_path, _ctx(tmp_path))


def test_generation_is_deterministic_and_batch_independent(tiny):
    import torch

    from llmops.backends.generation import generate, load_model
    from llmops.files import read_jsonl

    rows = read_jsonl(tiny["data"] / "test.jsonl")[:6]
    model, tok = load_model(tiny["base"], adapter=tiny["sft"] / "adapter")
    threads = torch.get_num_threads()
    a, _ = generate(model, tok, rows, max_new_tokens=8, batch_size=6, show_progress=False)
    b, _ = generate(model, tok, rows, max_new_tokens=8, batch_size=6, show_progress=False)
    c, _ = generate(model, tok, rows, max_new_tokens=8, batch_size=1, show_progress=False)
    assert a == b
    assert a == c
    assert torch.get_num_threads() == threads  # the one-thread mode for tiny models is undone


def test_export_merges_and_matches_base_plus_adapter(tiny, stage_params):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmops.stages import export

    out = tiny["root"] / "export"
    out.mkdir()
    params = {**stage_params("export"), "formats": ["adapter", "merged"], "merge_dtype": "float32"}
    inputs = {"sft": tiny["sft"], "base": tiny["base"]}
    report = export.run(params, inputs, out, _ctx(tiny["root"]))

    assert json.loads((out / "export_report.json").read_text()) == json.loads(json.dumps(report))
    assert report["formats"] == ["adapter", "merged"]
    assert report["paths"] == {"adapter": "adapter", "merged": "merged"}
    assert report["parity"]["passed"] is True
    assert report["parity"]["max_abs_logit_diff"] < 1e-4
    assert report["size_mb"] > 0
    assert (out / "adapter" / "adapter_config.json").is_file()
    merged = out / "merged"
    assert (merged / "model.safetensors").is_file()
    assert not (merged / "adapter_config.json").exists()

    tok = AutoTokenizer.from_pretrained(str(merged))
    assert tok.chat_template == CHATML_TEMPLATE
    reloaded = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32).eval()
    plain = AutoModelForCausalLM.from_pretrained(str(tiny["base"]), dtype=torch.float32).eval()
    tuned = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(tiny["base"]), dtype=torch.float32),
        str(tiny["sft"] / "adapter"),
    ).eval()
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Complete task 5."}],
        tokenize=False,
        add_generation_prompt=True,
    )
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        got, want, before = (m(**enc).logits for m in (reloaded, tuned, plain))
    assert torch.allclose(got, want, atol=1e-4)
    assert (want - before).abs().max() > 1e-2  # the adapter really changes the model


def test_export_full_finetune_copies_model(tiny, tmp_path, stage_params):
    import shutil

    from llmops.stages import export

    sft = tmp_path / "sft_full"
    shutil.copytree(tiny["base"], sft / "model")
    (sft / "training_report.json").write_text(json.dumps({"artifact": "model"}))
    out = tmp_path / "out"
    out.mkdir()
    report = export.run(
        {**stage_params("export"), "formats": ["adapter", "merged"]},
        {"sft": sft},
        out,
        _ctx(tmp_path),
    )
    assert report["formats"] == ["merged"] and report["artifact"] == "model"
    assert report["parity"]["passed"] is True
    assert (out / "merged" / "config.json").is_file()


def test_export_with_no_formats_exports_nothing(tiny, tmp_path, stage_params):
    from llmops.stages import export

    report = export.run({**stage_params("export"), "formats": []}, {"sft": tiny["sft"]}, tmp_path,
                        _ctx(tmp_path))
    assert (report["formats"], report["paths"], report["parity"]) == ([], {}, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export_report.json"]


def test_export_unknown_format_raises(tiny, tmp_path, stage_params):
    from llmops.errors import StageError
    from llmops.stages import export

    with pytest.raises(StageError, match=r"formats \['onnx'\] not supported"):
        export.run({**stage_params("export"), "formats": ["onnx"]}, {"sft": tiny["sft"]},
                   tmp_path, _ctx(tmp_path))
