"""The methods beside SFT and DPO (ORPO, SimPO, KTO, GRPO) on one shared SFT run of the tiny model.

One module-scoped chain: a tiny base pre-trained a little longer than the session's, a data
folder whose pairs each stage derives itself (``llmops.stages.pairs``) and one SFT adapter; each
method trains a few steps from it with its real TRL trainer and must raise its held-out figure
above the SFT model's (preference margin; GRPO's mean reward, on two processes).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from llmops.core.context import StageContext
from llmops.data import preferences
from llmops.errors import DataRejected
from llmops.files import write_jsonl

SHORT = (
    "lora=r8", "lora.dropout=0.0", "train.backend=hf", "train.learning_rate=3e-3",
    "train.epochs=1", "train.batch_size=8", "train.grad_accum=1", "train.max_length=256",
    "train.logging_steps=4", "train.save_steps=100", "train.save_total_limit=1",
)


def _ctx(root: Path) -> StageContext:
    return StageContext(run_dir=root, show_progress=False, logger=logging.getLogger("test.methods"))


# The chain's base: 150 pre-training steps on create/list calls. The session's 30-step base
# answers no test row in a readable call even after SFT, so GRPO's rewards would all be 0; from
# this one a 12-step SFT answers ~60% in valid JSON and ~6% exactly right: room to climb.
CHAIN_PRETRAIN = (
    "model.pretrain.n_examples=400", "model.pretrain.steps=150", "model.pretrain.batch_size=8",
    "model.pretrain.learning_rate=3e-3", "model.pretrain.legacy_tools=[]",
)


@pytest.fixture(scope="module")
def sft_chain(sft_data, tmp_path_factory, stage_params) -> dict[str, Path]:
    """A base, data (train 128 / test 32 rows, no pairs: each stage derives them) and one SFT
    adapter."""
    from llmops.stages import sft
    from llmops.stages import tiny_base as base_stage

    root = tmp_path_factory.mktemp("methods")
    tiny_base = root / "base"
    tiny_base.mkdir()
    base_stage.run(stage_params("base", *CHAIN_PRETRAIN), {}, tiny_base, _ctx(root))
    data = root / "data"
    data.mkdir()
    rows = [json.loads(line) for line in (sft_data / "train.jsonl").read_text().splitlines()]
    write_jsonl(data / "train.jsonl", rows[:128])
    write_jsonl(data / "test.jsonl", rows[128:])
    sft.run(stage_params("sft", *SHORT, "train=sft", "train.max_steps=12"),
            {"data": data, "base": tiny_base}, root / "sft", _ctx(root))
    return {"root": root, "data": data, "sft": root / "sft", "base": tiny_base}


def test_plans_of_the_reference_free_methods(compose_plan):
    _, sft_only = compose_plan(["usecase=none"])
    for method, knob in (("orpo", "train.orpo.beta=0.2"), ("simpo", "train.simpo.gamma=1.0"),
                         ("kto", "train.kto.beta=0.2")):
        _, plan = compose_plan(["usecase=none", f"train=sft_{method}", knob])
        stage = plan.stage(method)
        assert stage.needs == ("data", "sft", "base")
        assert stage.params["pairs"]["source"] == "derive"
        assert plan.stage("eval").needs[1] == method and plan.stage("export").needs[0] == method
        for shared in ("data", "sft", "eval_base"):
            assert plan.stage(shared).fingerprint == sft_only.stage(shared).fingerprint
        _, only = compose_plan(["usecase=none", f"train={method}"])
        assert only.stage(method).needs == ("data", "base")
        assert not any(s.kind == "sft" for s in only.stages)
    _, orpo = compose_plan(["usecase=none", "train=orpo", "train.learning_rate=1e-3"])
    assert orpo.stage("orpo").params["train"]["learning_rate"] == 1e-3  # ORPO trains like SFT
    _, simpo = compose_plan(["usecase=none", "train=simpo", "train.learning_rate=1e-3"])
    assert simpo.stage("simpo").params["simpo"] == {"beta": 2.0, "gamma": 0.5}
    assert simpo.stage("simpo").params["train"]["learning_rate"] == pytest.approx(1e-3 / 25)


@pytest.mark.slow
@pytest.mark.parametrize(("method", "lr"), [("orpo", "3e-3"), ("simpo", "1e-3")])
def test_reference_free_method_raises_held_out_margin(method, lr, sft_chain, stage_params):
    import importlib

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    stage = importlib.import_module(f"llmops.stages.{method}")
    c = sft_chain
    params = stage_params(method, *SHORT, f"train=sft_{method}", f"train.{method}.max_steps=16",
                          f"train.{method}.batch_size=8", f"train.{method}.learning_rate={lr}")
    out = c["root"] / method
    report = stage.run(params, {"data": c["data"], "sft": c["sft"], "base": c["base"]}, out,
                       _ctx(c["root"]))
    assert json.loads((out / f"{method}_report.json").read_text())["held_out"] == \
        report["held_out"]
    held = report["held_out"]
    assert report["method"] == method and report["reference"] is None
    assert report["pairs"]["method"] == "derive" and report["pairs"]["counts"]["train"] == 128
    assert held["start"] == "sft" and held["sft"]["n"] == 32
    assert held[method]["logp_margin"] > held["sft"]["logp_margin"]
    assert held[method]["logp_accuracy"] >= held["sft"]["logp_accuracy"]
    assert report["steps"] == 16 and report["loss_curve"]
    adapter = out / "adapter"
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(c["base"])), str(adapter))


def _labelled(rows: list[dict], seed: int) -> list[dict]:
    """Binary feedback: each row desirable, and its derived wrong answer undesirable."""
    out = []
    for row, pair in zip(rows, preferences.derive(rows, seed)[0], strict=True):
        out.append({**row, "label": True})
        out.append({**row, "messages": [*pair["prompt"], *pair["rejected"]], "label": False})
    return out


def test_kto_feedback_comes_from_labels_else_from_pairs_and_needs_both_kinds(tmp_path):
    from llmops.backends.kto import feedback_rows
    from llmops.data import task_api

    rows = task_api.generate(12, seed=5)
    write_jsonl(tmp_path / "train.jsonl", [*_labelled(rows[:4], 1), *rows[4:]])
    got, info = feedback_rows(tmp_path, tmp_path)
    assert info["desirable"] == 4 and info["undesirable"] == 4
    assert info["unlabelled_left_out"] == 8 and info["source"].startswith("labels")
    assert got[1]["completion"][0]["role"] == "assistant" and got[1]["label"] is False
    write_jsonl(tmp_path / "train.jsonl", rows)  # no labels: the pairs, unpaired
    write_jsonl(tmp_path / "pref_train.jsonl", preferences.derive(rows, 1)[0])
    got, info = feedback_rows(tmp_path, tmp_path)
    assert (info["desirable"], info["undesirable"]) == (12, 12)
    write_jsonl(tmp_path / "train.jsonl", [{**r, "label": True} for r in rows])
    with pytest.raises(DataRejected) as e:
        feedback_rows(tmp_path, tmp_path)
    assert e.value.exit_code == 5
    assert "hold 12 desirable and 0 undesirable answers; KTO needs both, and no undesirable " \
           "(label=false) row is there. Add rows labelled false" in str(e.value)


@pytest.mark.slow
def test_kto_on_labelled_rows_raises_held_out_margin(sft_chain, stage_params):
    from llmops.stages import kto

    c = sft_chain
    data = c["root"] / "kto_data"
    data.mkdir()
    rows = [json.loads(line) for line in (c["data"] / "train.jsonl").read_text().splitlines()]
    write_jsonl(data / "train.jsonl", _labelled(rows[:64], 7))
    (data / "test.jsonl").write_text((c["data"] / "test.jsonl").read_text())
    params = stage_params("kto", *SHORT, "train=sft_kto", "train.kto.max_steps=16",
                          "train.kto.batch_size=8", "train.kto.learning_rate=1e-3")
    report = kto.run(params, {"data": data, "sft": c["sft"], "base": c["base"]},
                     c["root"] / "kto", _ctx(c["root"]))
    assert report["feedback"]["desirable"] == 64 and report["feedback"]["undesirable"] == 64
    held = report["held_out"]
    assert held["start"] == "sft" and held["sft"]["n"] == 32
    assert held["kto"]["logp_margin"] > held["sft"]["logp_margin"]
    assert held["kto"]["rewards/margins"] > 0
    assert report["steps"] == 16 and report["reference"].startswith("the starting adapter")
    assert not (c["root"] / "kto" / "adapter" / "ref").exists()


@pytest.mark.slow
def test_simpo_resumes_from_its_latest_checkpoint(sft_chain, stage_params):
    from llmops.stages import simpo

    c = sft_chain
    inputs = {"data": c["data"], "sft": c["sft"], "base": c["base"]}
    steps = (*SHORT, "train=sft_simpo", "train.save_steps=2", "train.simpo.batch_size=4",
             "train.logging_steps=1")
    first = simpo.run(stage_params("simpo", *steps, "train.simpo.max_steps=2"), inputs,
                      c["root"] / "simpo_a", _ctx(c["root"]))
    assert first["steps"] == 2 and first["resumed_from_step"] == 0
    params = stage_params("simpo", *steps, "train.simpo.max_steps=3")
    params["train"]["resume_dir"] = str(c["root"] / "simpo_a")  # as the runner sets it
    second = simpo.run(params, inputs, c["root"] / "simpo_b", _ctx(c["root"]))
    assert second["resumed_from_step"] == 2 and second["steps"] == 3
    assert [p["step"] for p in second["loss_curve"]] == [1, 2, 3]


def test_merge_combines_sft_and_the_method_adapter(compose_plan):
    _, plan = compose_plan(["usecase=none", "train=sft_orpo", "merge=ties"])
    merge = plan.stage("merge")
    assert [a["stage"] for a in merge.params["adapters"]] == ["sft", "orpo"]
    assert merge.needs[:2] == ("sft", "orpo") and plan.stage("eval").needs[1] == "merge"
    _, plan = compose_plan(["usecase=none", "train=sft_kto", "merge=ties",
                            "merge.adapters=[sft,kto]"])
    assert plan.stage("merge").needs[:2] == ("sft", "kto")


def test_grpo_rewards_are_eval_scorers_named_as_its_metrics():
    from llmops.data import task_api
    from llmops.scoring.parsers import get_parser
    from llmops.scoring.rewards import REWARDS, describe, unknown_rewards

    assert set(describe()) == set(REWARDS) and all(describe().values())
    assert unknown_rewards(["exact_mach"]) == [
        "'exact_mach' is not a reward. Did you mean 'exact_match'? Rewards: "
        f"{', '.join(REWARDS)} (python -m llmops --options train lists what each measures)."]
    row = next(r for r in task_api.generate(20, seed=2) if r["messages"][-1].get("tool_calls"))
    call = row["messages"][-1]["tool_calls"][0]["function"]
    parse = get_parser("task_api")
    right = parse(json.dumps({"tool": call["name"], "arguments": json.loads(call["arguments"])}))
    assert REWARDS["exact_match"].value(row, right) == 1.0
    assert REWARDS["json_valid_rate"].value(row, right) == 1.0
    assert REWARDS["refusal_rate"].value(row, right) is None  # not a must-refuse row
    wrong = parse("I cannot help with that.")
    assert REWARDS["exact_match"].value(row, wrong) == 0.0
    assert REWARDS["rouge_l"].value(row, right, "anything") is None  # a call row


def test_grpo_scores_free_text_rows_with_rouge_l_and_chrf_or_leaves_them_out(tmp_path,
                                                                            stage_params):
    from llmops.backends.grpo import checkable_rows, reward_functions
    from llmops.data import task_api
    from llmops.scoring.parsers import get_parser
    from llmops.stages import grpo

    ref = "Tasks are stored for 30 days after they are completed."
    text_row = {"messages": [{"role": "user", "content": "How long are done tasks kept?"},
                             {"role": "assistant", "content": ref}]}
    rows = [*task_api.generate(6, seed=4), text_row]
    write_jsonl(tmp_path / "train.jsonl", rows)
    assert text_row not in checkable_rows(tmp_path / "train.jsonl")
    assert checkable_rows(tmp_path / "train.jsonl", "reward") == rows
    fns = reward_functions(["rouge_l", "chrf", "exact_match"], get_parser("task_api"))
    answers = [ref, f"<think>The policy says 30 days.</think>{ref}",
               "Done tasks are kept for 30 days.", "I cannot help with that."]
    got = {f.__name__: f(prompts=[""] * 4, completions=answers,
                         row=[json.dumps(text_row)] * 4) for f in fns}
    assert got["rouge_l"][:2] == [1.0, 1.0] and got["chrf"][:2] == [1.0, 1.0]  # no reasoning
    assert 0 < got["rouge_l"][2] < 1 and 0 < got["chrf"][2] < 1
    assert got["rouge_l"][3] < got["rouge_l"][2] and got["chrf"][3] < got["chrf"][2]
    assert got["exact_match"] == [None] * 4  # no call reward scores a free-text row
    # Only free-text rows, left out: refused before a model loads (exit 5).
    write_jsonl(tmp_path / "train.jsonl", [text_row] * 4)
    (tmp_path / "sft" / "adapter").mkdir(parents=True)
    with pytest.raises(DataRejected) as e:
        grpo.train(stage_params("grpo", "train=sft_grpo"), {"data": tmp_path, "sft": tmp_path /
                   "sft", "base": tmp_path / "no_model"}, tmp_path / "grpo", _ctx(tmp_path))
    assert e.value.exit_code == 5 and "train.grpo.free_text=reward" in str(e.value)
    assert not (tmp_path / "grpo").exists()


def test_grpo_plan_rules_and_memory(compose_plan):
    from llmops.errors import ConfigError
    from llmops.planning.stage_memory import stage_parts

    _, sft_only = compose_plan(["usecase=none"])
    _, plan = compose_plan(["usecase=none", "train=sft_grpo"])
    grpo = plan.stage("grpo")
    assert grpo.needs == ("data", "sft", "base") and plan.stage("eval").needs[1] == "grpo"
    assert grpo.params["train"]["batch_size"] == 4  # num_generations: one prompt a step
    for shared in ("data", "sft", "eval_base"):
        assert plan.stage(shared).fingerprint == sft_only.stage(shared).fingerprint
    with pytest.raises(ConfigError) as e:
        compose_plan(["usecase=none", "train=sft_grpo", "train.grpo.batch_size=6",
                      "+train.grpo.rewards.exact_mach=1.0"])
    problems = {p.key: p.message for p in e.value.problems}
    assert "Did you mean 'exact_match'?" in problems["train.grpo.rewards"]
    assert problems["train.grpo.batch_size"].startswith("6 is not a multiple of")
    with pytest.raises(ConfigError) as e:
        compose_plan(["usecase=none", "train=sft_grpo", "train.grpo.free_text=reward"])
    assert [p.key for p in e.value.problems] == ["train.grpo.free_text"]
    assert "+train.grpo.rewards.rouge_l=1.0" in e.value.problems[0].message
    with pytest.raises(ConfigError) as e:
        compose_plan(["usecase=none", "train=sft_grpo", "+train.grpo.rewards.chrf=0.5"])
    assert "Set train.grpo.free_text=reward" in e.value.problems[0].message
    _, text = compose_plan(["usecase=none", "train=sft_grpo", "train.grpo.free_text=reward",
                            "+train.grpo.rewards.rouge_l=1.0"])
    assert text.stage("grpo").params["grpo"]["free_text"] == "reward"
    assert grpo.params["grpo"]["free_text"] == "leave_out"
    model = plan.stage("compute").params["model"]  # the tiny model's architecture facts
    knobs = {"batch_size": 4, "num_generations": 4, "max_completion_length": 64, "beta": 0.04}
    args = (model, None, {"type": "none"}, grpo.params["train"], {"device": "cpu"})
    with_ref, _, notes = stage_parts("grpo", *args, {"grpo": knobs})
    no_ref, _, _ = stage_parts("grpo", *args, {"grpo": {**knobs, "beta": 0.0}})
    assert with_ref["reference"] == with_ref["weights"] and "reference" not in no_ref
    assert with_ref["kv_cache"] > 0 and any("KV cache of 4 completions" in n for n in notes)


@pytest.mark.slow
def test_grpo_on_two_processes_raises_the_held_out_mean_reward(sft_chain, stage_params):
    """GRPO (TRL's GRPOTrainer, DDP on two gloo ranks) on eval's own scorers: exact match plus
    partial credit eval also measures (right tool, JSON and schema validity). The held-out test
    rows, answered greedily by the SFT model and then by the GRPO model, score higher after."""
    from llmops.stages import grpo

    c = sft_chain
    params = stage_params("grpo", *SHORT, "train=sft_grpo", "train.grpo.max_steps=8",
                          "train.grpo.learning_rate=3e-3", "train.grpo.max_completion_length=48",
                          "train.grpo.num_generations=8", "train.grpo.batch_size=8",
                          "+train.grpo.rewards.tool_accuracy=0.5",
                          "train.grpo.rewards.json_valid_rate=0.2", "train.logging_steps=1",
                          "distributed=ddp", "distributed.nproc_per_node=2")
    out = c["root"] / "grpo"
    report = grpo.run(params, {"data": c["data"], "sft": c["sft"], "base": c["base"]}, out,
                      _ctx(c["root"]))
    assert json.loads((out / "grpo_report.json").read_text()) == report
    assert report["world_size"] == 2 and report["launcher"] == "torchrun"
    assert report["strategy"] == "ddp" and report["effective_batch"] == 16  # 2 prompts a step
    assert report["steps"] == 8 and report["reference"].startswith("the starting adapter")
    curves = report["reward_curves"]
    assert set(curves) == {"exact_match", "schema_valid_rate", "json_valid_rate",
                           "tool_accuracy", "parses"}
    steps = [p[0] for p in report["kl_curve"]]
    assert steps == list(range(1, 9)) == [p[0] for p in curves["parses"]]
    assert len(report["completion_length_curve"]) == 8
    held = report["held_out"]
    sft, tuned = held["sft"], held["grpo"]
    assert sft["n"] == tuned["n"] == 32 and held["start"] == "sft"
    weights = params["grpo"]["rewards"]
    for side in (sft, tuned):
        assert set(side["rewards"]) == set(weights) and 0 <= side["parse_rate"] <= 1
    assert 0 < sft["mean_reward"] < tuned["mean_reward"] and held["improved"] is True
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
