"""DPO: preference pairs (derived and user-given), the plan, and the dpo stage on the tiny model."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from llmops.core.context import StageContext
from llmops.data import preferences, task_api
from llmops.files import write_jsonl

# A short sft_dpo run on the tiny base (LoRA r8); tests add the steps they need.
SHORT = (
    "train=sft_dpo", "lora=r8", "lora.dropout=0.0", "train.backend=hf", "train.learning_rate=3e-3",
    "train.epochs=1", "train.batch_size=8", "train.grad_accum=1", "train.max_length=256",
    "train.logging_steps=4", "train.save_steps=100", "train.save_total_limit=1",
    "train.dpo.learning_rate=3e-3", "train.dpo.max_steps=16", "train.dpo.batch_size=8",
)


def _ctx(root: Path) -> StageContext:
    return StageContext(run_dir=root, show_progress=False, logger=logging.getLogger("test.dpo"))


def test_derived_pairs_cover_every_kind_and_prefer_the_reference():
    rows = task_api.generate(120, seed=1)
    pairs, kinds = preferences.derive(rows, seed=0)
    assert len(pairs) == 120
    assert set(kinds) == {*preferences.CALL_KINDS, "complied"}
    for pair in pairs:
        chosen, rejected = pair["chosen"][0], pair["rejected"][0]
        assert chosen != rejected and pair["prompt"][-1]["role"] == "user"
        if pair["meta"]["kind"] == "legacy_v1":
            assert json.loads(rejected["content"]).keys() == {"action", "params"}
        if pair["meta"]["kind"] == "malformed_json":
            with pytest.raises(json.JSONDecodeError):
                json.loads(rejected["tool_calls"][0]["function"]["arguments"])
    assert preferences.derive(rows, seed=0)[0] == pairs  # deterministic


def test_user_pairs_plain_and_chat_with_rejects_by_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join([
        json.dumps({"prompt": "Delete task 3.", "chosen": "ok", "rejected": "no"}),
        json.dumps({"prompt": [{"role": "user", "content": "hi"}],
                    "chosen": [{"role": "assistant", "content": "a"}],
                    "rejected": [{"role": "assistant", "content": "b"}]}),
        json.dumps({"prompt": "x", "chosen": "same", "rejected": "same"}),
        "{not json",
        json.dumps({"prompt": "x", "chosen": "y"}),
    ]) + "\n")
    pairs, rejects, n = preferences.read_pairs(path, system_prompt="S", cache_dir=str(tmp_path))
    assert n == 5 and len(pairs) == 2
    assert pairs[0]["prompt"] == [{"role": "system", "content": "S"},
                                  {"role": "user", "content": "Delete task 3."}]
    assert [(r["line"], r["code"]) for r in rejects] == [
        (3, "same_pair"), (4, "invalid_json"), (5, "bad_field")]
    assert rejects[0]["message"] == ("equals chosen; the pair teaches nothing. Give a worse "
                                     "answer or drop the pair.")


def test_pairs_are_derived_by_the_preference_stage_not_the_data_stage(tmp_path, stage_params):
    from llmops.stages import data, pairs

    params = stage_params("data", "data.n_examples=100", "train=sft_dpo")
    assert params == stage_params("data", "data.n_examples=100")  # the same for every method
    (tmp_path / "data").mkdir()
    report = data.run(params, {}, tmp_path / "data", _ctx(tmp_path))
    assert "preferences" not in report and not list((tmp_path / "data").glob("pref_*"))
    knobs = stage_params("dpo", "data.n_examples=100", "train=sft_dpo")["pairs"]
    folder, section = pairs.prepare(knobs, tmp_path / "data", tmp_path / "dpo", _ctx(tmp_path))
    assert folder == tmp_path / "dpo" / "pairs"
    assert section["method"] == "derive"
    assert section["counts"] == {"train": 80, "val": 10, "test": 10}
    assert set(section["derivation"]) == set(section["kinds"])
    again, _ = pairs.prepare(knobs, tmp_path / "data", tmp_path / "again", _ctx(tmp_path))
    assert (again / "pref_test.jsonl").read_text() == (folder / "pref_test.jsonl").read_text()


def test_plans_add_dpo_without_touching_the_shared_stages(compose_plan):
    _, default = compose_plan(["usecase=none"])
    assert not any(s.kind in ("dpo", "merge", "lm_eval") for s in default.stages)
    _, plan = compose_plan(["usecase=none", "train=sft_dpo", "train.dpo.beta=0.2"])
    dpo = plan.stage("dpo")
    assert dpo.needs == ("data", "sft", "base") and dpo.params["dpo"]["beta"] == 0.2
    assert dpo.params["pairs"]["source"] == "derive"
    for shared in ("base", "data", "sft", "eval_base"):  # a method sweep shares them
        assert plan.stage(shared).fingerprint == default.stage(shared).fingerprint, shared
    assert plan.stage("eval").needs[1] == "dpo" and plan.stage("export").needs[0] == "dpo"
    _, only = compose_plan(["usecase=none", "train=dpo"])
    assert not any(s.kind == "sft" for s in only.stages)
    assert only.stage("dpo").needs == ("data", "base")
    assert only.stage("data").fingerprint == default.stage("data").fingerprint


def test_dpo_rules_name_the_key():
    from llmops.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        from llmops.cli import check

        check(["usecase=none", "train=sft_dpo", "lora=none", "train.dpo.init_adapter=/nope",
               "data.preference_path=/nope.jsonl"])
    keys = {p.key for p in e.value.problems}
    assert {"lora", "train.dpo.init_adapter", "data.preference_path"} <= keys


@pytest.fixture(scope="module")
def sft_run(tiny_base, sft_data, tmp_path_factory, stage_params) -> dict[str, Path]:
    """A data folder (train 128 / test 32 rows, with their derived pairs) and one 12-step SFT
    adapter on it, which both DPO tests start from."""
    from llmops.stages import sft

    root = tmp_path_factory.mktemp("dpo_sft")
    data = root / "data"
    data.mkdir()
    rows = [json.loads(line) for line in (sft_data / "train.jsonl").read_text().splitlines()]
    for name, part, seed in (("train", rows[:128], 1), ("test", rows[128:], 2)):
        write_jsonl(data / f"{name}.jsonl", part)
        write_jsonl(data / f"pref_{name}.jsonl", preferences.derive(part, seed)[0])
    sft.run(stage_params("sft", *SHORT, "train.max_steps=12"), {"data": data, "base": tiny_base},
            root / "sft", _ctx(root))
    return {"data": data, "sft": root / "sft", "rows": rows}


@pytest.mark.slow
def test_sft_then_dpo_raises_held_out_margin(tiny_base, sft_run, tmp_path, stage_params):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llmops.stages import dpo

    data = sft_run["data"]
    ctx = _ctx(tmp_path)
    report = dpo.run(stage_params("dpo", *SHORT, "train.dpo.learning_rate=1e-3"),
                     {"data": data, "sft": sft_run["sft"], "base": tiny_base}, tmp_path / "dpo",
                     ctx)
    saved = json.loads((tmp_path / "dpo" / "dpo_report.json").read_text())
    assert saved["held_out"] == report["held_out"]
    held = report["held_out"]
    assert held["start"] == "sft" and held["sft"]["n"] == 32
    assert held["dpo"]["logp_margin"] > held["sft"]["logp_margin"]
    assert held["dpo"]["rewards/margins"] > 0 and held["sft"]["rewards/margins"] == 0
    assert set(report["train_metrics"]) >= {"rewards/chosen", "rewards/rejected",
                                            "rewards/margins", "rewards/accuracies"}
    adapter = tmp_path / "dpo" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "ref").exists()
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_base)), str(adapter))

    fresh = dpo.run(stage_params("dpo", *SHORT, "train=dpo", "train.dpo.max_steps=4"),
                    {"data": data, "base": tiny_base}, tmp_path / "dpo_base", ctx)
    assert fresh["held_out"]["start"] == "base" and fresh["init_adapter"] is None


@pytest.mark.slow
def test_dpo_resumes_from_its_latest_checkpoint(tiny_base, sft_run, tmp_path, stage_params):
    """An interrupted sft_dpo run continues from its checkpoint (both adapters restored)."""
    from llmops.stages import dpo

    data = tmp_path / "data"
    data.mkdir()
    rows = sft_run["rows"]
    write_jsonl(data / "train.jsonl", rows[:64])
    write_jsonl(data / "pref_train.jsonl", preferences.derive(rows[:64], 1)[0])
    ctx = _ctx(tmp_path)
    inputs = {"data": data, "sft": sft_run["sft"], "base": tiny_base}
    steps = ("train.save_steps=2", "train.dpo.batch_size=4", "train.logging_steps=1")
    first = dpo.run(stage_params("dpo", *SHORT, *steps, "train.dpo.max_steps=4"), inputs,
                    tmp_path / "a", ctx)
    assert first["steps"] == 4 and first["resumed_from_step"] == 0
    params = stage_params("dpo", *SHORT, *steps, "train.dpo.max_steps=6")
    params["train"]["resume_dir"] = str(tmp_path / "a")  # as the runner sets it
    second = dpo.run(params, inputs, tmp_path / "b", ctx)
    assert second["resumed_from_step"] == 4 and second["resumed_from"].endswith("checkpoint-4")
    assert second["steps"] == 6
    # The curve carries on from the first attempt's history (restored with the checkpoint).
    assert [p["step"] for p in second["loss_curve"]] == [1, 2, 3, 4, 5, 6]
    assert (tmp_path / "b" / "adapter" / "adapter_model.safetensors").is_file()
