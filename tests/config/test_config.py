"""Groups and option files as documented; bad input is reported precisely.

That every option of every group composes, validates and compiles (as it runs on this machine,
with what it needs besides itself) is checked with its params' types in
tests/compiler/test_params_types.py, which composes each option once for both checks.
"""

from __future__ import annotations

import pytest

from llmops.config.hydra.groups import conf_dir, group_options, groups
from llmops.data import samples_dir
from llmops.errors import ConfigError

SAMPLE_JSONL = samples_dir() / "tasks_chat.jsonl"


def test_groups_are_the_documented_ones():
    assert set(groups()) >= {"model", "lora", "quant", "data", "train", "eval", "deploy",
                             "hardware", "tracking", "usecase", "sweeps"}
    assert {"tiny", "qwen0.5b", "qwen1.5b", "qwen3b", "qwen7b", "llama1b", "llama3b",
            "llama8b"} <= set(group_options("model"))
    assert {"none", "r8", "r16", "r32", "r64"} <= set(group_options("lora"))
    assert {"none", "nf4", "int8"} <= set(group_options("quant"))
    assert {"auto", "cpu", "t4", "a10g", "a100_40g", "a100_80g", "h100"} <= set(
        group_options("hardware"))


def test_every_option_file_opens_with_a_comment():
    for path in sorted(conf_dir().rglob("*.yaml")):
        if path.name == "config.yaml":
            continue
        first = path.read_text().lstrip().splitlines()[0]
        assert first.startswith("#"), f"{path} must open with a comment saying what it is"


def test_readme_example_composes_as_written(compose_plan):
    cfg, plan = compose_plan(["model=qwen3b", "lora=r16", "hardware=t4", "dry_run=true"])
    assert cfg.model.hub_id == "Qwen/Qwen2.5-3B-Instruct"
    assert cfg.lora.r == 16 and cfg.lora.alpha == 32
    assert cfg.train.learning_rate == cfg.model.recommended_lr
    assert [s.name for s in plan.stages] == ["decide", "compute", "data", "sft", "eval_base",
                                            "eval", "export"]


def _problems(compose_plan, overrides):
    with pytest.raises(ConfigError) as info:
        compose_plan(overrides)
    return {p.key: p.message for p in info.value.problems}


def test_typo_in_key_is_an_error_with_did_you_mean(compose_plan):
    problems = _problems(compose_plan, ["lora.rnak=16"])
    assert list(problems) == ["lora.rnak"]
    assert problems["lora.rnak"].startswith("unknown key. Did you mean 'lora.r'?")
    assert "alpha, dropout, enabled, r, target_modules" in problems["lora.rnak"]


def test_added_unknown_key_is_still_an_error(compose_plan):
    problems = _problems(compose_plan, ["+train.lr=1e-4"])
    assert problems["train.lr"].startswith("unknown key. Did you mean 'train.learning_rate'?")


def test_all_bad_values_reported_at_once(compose_plan):
    problems = _problems(compose_plan, ["lora.r=0", "train.learning_rate=-1"])
    assert problems == {
        "lora.r": "must be ≥ 1 (got 0). Use lora=none to train without LoRA.",
        "train.learning_rate": "must be > 0.0 (got -1). Typical values: 1e-4 to 2e-4 for 1B+ "
                               "models, 2e-3 for model=tiny.",
    }


def test_hydra_errors_are_collected_with_the_rest(compose_plan):
    problems = _problems(compose_plan, ["quant=nf8", "lora=r17", "train.learning_rate=[",
                                        "+lora.r=8", "lroa=r8"])
    assert problems["quant"] == ("'nf8' is not an option of this group. Did you mean 'nf4'? "
                                 "Options: int8, nf4, none.")
    assert problems["lora"].startswith("'r17' is not an option of this group. Did you mean 'r16'?")
    assert problems["train.learning_rate"].startswith("cannot parse override")
    assert problems["lora.r"] == ("already exists, so '+lora.r' (add a new key) does not apply. "
                                  "Write lora.r=8.")
    assert "Did you mean 'lora'?" in problems["lroa"]


def test_literal_values_name_what_is_allowed(compose_plan):
    problems = _problems(compose_plan, ["quant.type=nf8", "train.backend=unsloth2"])
    assert problems["quant.type"] == "'nf8' is not one of none, nf4, int8. Did you mean 'nf4'?"
    assert problems["train.backend"].startswith(
        "'unsloth2' is not one of auto, hf, unsloth, openai.")


def test_qlora_needs_an_adapter(compose_plan):
    problems = _problems(compose_plan, ["quant=nf4", "lora=none"])
    assert problems["quant.type"].startswith("'nf4' freezes a quantized base, so it needs a LoRA")


def test_unsloth_without_cuda_is_refused(compose_plan):
    problems = _problems(compose_plan, ["train.backend=unsloth"])
    assert problems["train.backend"].startswith("'unsloth' needs a CUDA GPU")
    assert "no CUDA GPU was found" in problems["train.backend"]


def test_alpha_r_sanity(compose_plan):
    problems = _problems(compose_plan, ["lora.r=4", "lora.alpha=512"])
    assert problems["lora.alpha"].startswith("alpha/r = 512/4 = 128 is outside 1/8..8")


def test_missing_data_file_and_fractions(compose_plan):
    problems = _problems(compose_plan, ["data=jsonl", "data.path=/nonexistent/x.jsonl",
                                        "data.val_fraction=0.6", "data.test_fraction=0.5"])
    assert problems["data.path"].startswith("/nonexistent/x.jsonl matches no file.")
    assert problems["data.val_fraction"].startswith("val_fraction + test_fraction = 1.1 leaves no")


def test_required_value_left_unset(compose_plan):
    problems = _problems(compose_plan, ["data=hf"])
    assert problems["data.hf_id"] == (
        "is required (it is ???). Set it on the command line: data.hf_id=...")


def test_unknown_gate_metric(compose_plan):
    problems = _problems(compose_plan, ["eval.gates.accuracy.metric=exact_mtch"])
    assert problems["eval.gates.accuracy.metric"].startswith(
        "unknown metric 'exact_mtch'. Did you mean 'exact_match'?")


def test_gpu_profile_needs_dry_run_on_a_cpu_machine(compose_plan):
    from llmops.env import detect

    if detect().cuda:
        pytest.skip("this machine has a GPU")
    problems = _problems(compose_plan, ["hardware=t4"])
    assert problems["hardware"].startswith("'t4' is a GPU profile, but this machine has no CUDA")


def test_fingerprints_follow_what_changes(compose_plan):
    _, a = compose_plan([])
    _, b = compose_plan(["train.learning_rate=1e-3"])
    _, c = compose_plan(["eval.batch_size=8", "progress=false"])
    fa = {s.name: s.fingerprint for s in a.stages}
    fb = {s.name: s.fingerprint for s in b.stages}
    fc = {s.name: s.fingerprint for s in c.stages}
    assert fa["data"] == fb["data"] and fa["base"] == fb["base"]
    assert fa["eval_base"] == fb["eval_base"]
    assert fa["sft"] != fb["sft"] and fa["eval"] != fb["eval"] and fa["export"] != fb["export"]
    assert fa["sft"] == fc["sft"] and fa["eval_base"] != fc["eval_base"]


def test_data_file_content_changes_the_fingerprint(compose_plan, tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(SAMPLE_JSONL.read_text())
    _, a = compose_plan(["data=jsonl", f"data.path={f}"])
    f.write_text(SAMPLE_JSONL.read_text() + "\n")
    _, b = compose_plan(["data=jsonl", f"data.path={f}"])
    assert a.stage("data").fingerprint != b.stage("data").fingerprint


def test_plan_round_trips_through_json(compose_plan, tmp_path):
    from llmops.core.plan import Plan

    _, plan = compose_plan([])
    plan.write(tmp_path / "plan.json")
    assert Plan.read(tmp_path / "plan.json") == plan
