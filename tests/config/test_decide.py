"""The decide stage's assessment: the issue's three cases, the demo's go, criteria and ROI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import llmops.conf
import pytest

from llmops.config.hydra.groups import option_files
from llmops.config.usecase import UsecaseConfig
from llmops.planning.decide import assess, no_go_message, red_flags, roi

CONF = Path(__file__).resolve().parents[2] / "conf"


def _yaml(group: str, name: str) -> dict:
    data = llmops.conf.load(group, name)  # with the base it inherits
    data.pop("pretrain", None)
    return data


def _usecase(name: str) -> dict:
    return UsecaseConfig(**_yaml("usecase", name)).model_dump()


@pytest.fixture(scope="module")
def t4_llama8b() -> dict:
    return {"model": _yaml("model", "llama8b"), "hardware": _yaml("hardware", "t4"),
            "train": {"max_length": 512, "precision": "auto", "backend": "hf"}}


@pytest.mark.parametrize("name", llmops.conf.options("usecase"))
def test_every_usecase_option_validates(name):
    UsecaseConfig(**_yaml("usecase", name))


def test_usecase_schema_forbids_unknown_keys():
    with pytest.raises(ValueError, match="domian"):
        UsecaseConfig(enabled=True, domian="medical")


def test_product_descriptions_is_a_go_with_sft_qlora_and_positive_roi(t4_llama8b):
    r = assess(_usecase("product_descriptions"), t4_llama8b, catalog=option_files())
    assert r["verdict"] == "go", r["reasons"]
    assert r["method"]["training"] == "SFT"
    assert r["method"]["adapter"] == "QLoRA"
    assert r["roi"]["positive"] and r["roi"]["payback_months"] < 12
    assert all(c["verdict"] == "pass" for c in r["criteria"].values())


def test_know_everything_about_our_product_is_a_no_go_pointing_to_rag(t4_llama8b):
    r = assess(_usecase("product_knowledge"), t4_llama8b, catalog=option_files())
    assert r["verdict"] == "no-go"
    assert "knowledge" in {f["flag"] for f in r["red_flags"]}
    assert any(a.startswith("RAG") for a in r["alternatives"])
    assert "RAG" in no_go_message(r, "decision_report.json")


def test_medical_formatting_is_sft_dpo_with_evaluation_rigor_flagged(t4_llama8b):
    r = assess(_usecase("medical_formatting"), t4_llama8b, catalog=option_files())
    assert r["method"]["training"] == "SFT+DPO"
    assert r["evaluation_rigor"]["flagged"]
    assert any("medical" in reason for reason in r["evaluation_rigor"]["reasons"])


def test_the_default_demo_use_case_is_a_go():
    tiny = {"model": _yaml("model", "tiny"),
            "hardware": {"name": "cpu", "device": "cpu", "memory_gb": 8},
            "train": {"max_length": 512, "precision": "auto", "backend": "hf"}}
    r = assess(_usecase("task_api"), tiny, catalog=option_files())
    assert r["go"], r["reasons"]
    assert r["method"]["adapter"] == "LoRA"


def test_each_failed_criterion_gives_a_reason():
    u = {**_usecase("product_descriptions"), "examples_available": 120, "stability_months": 3}
    r = assess(u)
    assert r["criteria"]["data_availability"]["verdict"] == "fail"
    assert r["criteria"]["stability"]["verdict"] == "fail"
    assert any(x.startswith("data_availability: only 120") for x in r["reasons"])
    assert r["method"]["adapter"] is None  # no model/hardware given


@pytest.mark.parametrize("text,flag", [
    ("It must reach 100% accuracy on every invoice", "perfection"),
    ("Requirements change frequently as marketing iterates", "unstable"),
    ("Answer with the latest prices from the catalogue", "fresh_data"),
])
def test_red_flags(text, flag):
    assert flag in {f["flag"] for f in red_flags(text)}


def test_roi_payback_and_break_even():
    r = roi({"hours_per_task": 0.5, "automation_rate": 1.0, "hourly_rate_usd": 40,
             "tasks_per_month": 100, "infra_cost_monthly_usd": 500,
             "maintenance_cost_monthly_usd": 500, "investment_usd": 3000,
             "api_cost_per_1k_queries_usd": 2.0, "monthly_queries": 1_000_000})
    assert r["net_monthly_usd"] == 1000 and r["payback_months"] == 3
    assert r["break_even"]["break_even_queries_per_month"] == 500_000
    assert r["break_even"]["cheaper"] == "self-host"


def test_refinement_recommends_dpo():
    assert assess({**_usecase("product_descriptions"), "refinement": True})["method"][
        "training"] == "DPO"


def test_decide_stage_writes_its_report(tmp_path, t4_llama8b):
    from llmops.core.context import StageContext
    from llmops.stages import decide

    params = {"usecase": _usecase("product_knowledge"), **t4_llama8b}
    report = decide.run(params, {}, tmp_path, StageContext(run_dir=tmp_path,
                                                           logger=logging.getLogger("t")))
    assert json.loads((tmp_path / "decision_report.json").read_text())["verdict"] == "no-go"
    assert report["go"] is False


def test_compute_stage_writes_its_plan(tmp_path, stage_params):
    from llmops.core.context import StageContext
    from llmops.stages import compute

    # A plan that fits compiles (QLoRA); the stage then gets a full fine-tune in 16-bit, which
    # does not fit a T4: compile time would refuse it, so it is made from the compiled params.
    params = stage_params("compute", "model=llama8b", "quant=nf4", "train.max_length=512",
                          "dry_run=true", hardware="t4")
    params.update(lora=None, quant={"type": "none", "double_quant": False})
    params["train"].update(batch_size=16, grad_accum=1, precision="fp16",
                           gradient_checkpointing=False)
    report = compute.run(params, {}, tmp_path, StageContext(run_dir=tmp_path,
                                                            logger=logging.getLogger("t")))
    saved = json.loads((tmp_path / "compute_plan.json").read_text())
    assert saved["fits"] is False and saved["fixes"] and report["parts_gb"]["weights"] > 16
