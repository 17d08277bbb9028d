"""Merge stage: one adapter or several (linear, TIES, DARE) into a float32 base, reload, parity."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from fixtures_model import random_adapter

from llmops.core.context import StageContext

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def adapters(tiny_base, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return [random_adapter(tiny_base, root / f"a{i}", seed=i, scale=0.3) for i in range(2)]


def _merge(tiny_base, out: Path, adapters, **params):
    from llmops.stages import merge

    out.mkdir()
    ctx = StageContext(run_dir=out, show_progress=False, logger=logging.getLogger("test.merge"))
    p = {"model": {"name": "tiny", "hub_id": None, "trust_remote_code": False}, "method": "linear",
         "adapters": [{"path": str(a)} for a in adapters], "weights": [1.0] * len(adapters),
         "density": 0.5, "majority_sign_method": "total", "dtype": "float32",
         "quant_trained": "none", **params}
    return merge.run(p, {"base": tiny_base}, out, ctx)


def _logits(model, tok):
    import torch

    enc = tok(tok.apply_chat_template([{"role": "user", "content": "Delete task 7."}],
                                      tokenize=False, add_generation_prompt=True),
              return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        return model(**enc).logits


def test_merged_model_reloads_with_plain_transformers_and_matches(tiny_base, adapters, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report = _merge(tiny_base, tmp_path / "one", adapters[:1], quant_trained="nf4")
    assert report["method"] == "merge_and_unload" and report["parity"]["passed"]
    assert "nf4" in report["note"] and "float32" in report["note"]
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "one" / "model"))
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "one" / "model")).eval()
    base = AutoModelForCausalLM.from_pretrained(str(tiny_base), dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(adapters[0])).eval()
    expected = _logits(peft_model, tok)
    diff = float((_logits(merged, tok) - expected).abs().max())
    assert diff < 1e-4
    plain = AutoModelForCausalLM.from_pretrained(str(tiny_base)).eval()
    assert float((_logits(plain, tok) - expected).abs().max()) > 1e-2  # the adapter mattered
    assert json.loads((tmp_path / "one" / "merge_report.json").read_text())["parity"]["passed"]


@pytest.mark.parametrize("method,weights", [("linear", [0.5, 0.5]), ("ties", [1.0, 1.0]),
                                            ("dare_ties", [1.0, 0.5]), ("cat", [1.0, 1.0])])
def test_several_adapters_combine_and_merge(tiny_base, adapters, tmp_path, method, weights):
    from peft import PeftConfig

    report = _merge(tiny_base, tmp_path / method, adapters, method=method, weights=weights,
                    density=0.7)
    assert report["method"] == method and report["parity"]["passed"]
    assert report["parity"]["max_abs_logit_diff"] < 1e-3
    assert PeftConfig.from_pretrained(str(tmp_path / method / "adapter")).r in (4, 8)


def test_export_uses_the_merge_stage_output(tiny_base, adapters, tmp_path, stage_params):
    from llmops.stages import export

    _merge(tiny_base, tmp_path / "m", adapters[:1])
    out = tmp_path / "export"
    out.mkdir()
    ctx = StageContext(run_dir=out, show_progress=False, logger=logging.getLogger("test.merge"))
    report = export.run({**stage_params("export"), "formats": ["adapter", "merged"]},
                        {"merge": tmp_path / "m", "base": tiny_base}, out, ctx)
    assert report["source_stage"] == "merge" and report["formats"] == ["adapter", "merged"]
    assert (out / "merged" / "model.safetensors").is_file()
    assert report["parity"]["from"] == "merge stage"
