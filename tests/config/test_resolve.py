"""One resolve step (llmops.config.resolve), one stage table, and the fingerprints they keep."""

from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys

import pytest

from llmops.cli import to_plain
from llmops.compiler.compile import BUILDERS, compile_plan
from llmops.config.hydra.compose import compose
from llmops.config.validate import validate_and_resolve
from llmops.core.plan import STAGE_ORDER, TUNED_STAGES, report_name, stage_module
from llmops.env import Environment, Gpu
from llmops.planning.memory import estimate

PKGS = frozenset({"bitsandbytes", "wandb", "lm_eval", "llama_cpp"})
CPU = Environment(cpu_count=2, memory_gb=15.6, installed=PKGS)
H100 = Environment(gpus=(Gpu("NVIDIA H100 80GB HBM3", 79.6),), cpu_count=16, memory_gb=128.0,
                   installed=PKGS)
H100_UNSLOTH = dataclasses.replace(H100, installed=PKGS | {"unsloth"})


def _resolve(env: Environment, *overrides: str):
    return validate_and_resolve(to_plain(compose(list(overrides))), env)


def test_cpu_resolves_device_precision_dtype_backend_and_one_thread_for_tiny():
    cfg, r = _resolve(CPU)
    # The multi-GPU keys (interconnect_gbps, num_nodes) are left out where the profile does not
    # set them, so one-GPU and CPU plans keep their fingerprints.
    single = cfg.hardware.model_dump(exclude={"interconnect_gbps", "num_nodes"})
    assert dict(r.hardware) == {**single, "device": "cpu", "num_gpus": 0,
                                "bf16": False, "cpu_count": 2, "memory_gb": 15.6}
    assert (r.device, r.precision, r.compute_dtype, r.backend) == ("cpu", "fp32", "float32", "hf")
    assert r.threads == 1
    # A 3B model on a CPU that holds it keeps torch's own thread count (on this 15.6 GB one its
    # plan does not fit: exit 2, tests/planning/test_stage_plan.py).
    big = dataclasses.replace(CPU, memory_gb=512.0)
    assert _resolve(big, "model=qwen3b")[1].threads is None


def test_faked_cuda_machine_resolves_the_gpu_from_the_environment():
    _, r = _resolve(H100, "model=qwen1.5b")
    hw = r.hardware
    assert (hw["device"], hw["gpu_name"], hw["gpu_memory_gb"], hw["num_gpus"]) == (
        "cuda", "NVIDIA H100 80GB HBM3", 79.6, 1)
    assert (hw["cpu_count"], hw["memory_gb"]) == (16, 128.0)
    # hardware=auto cannot tell whether the GPU has bf16 (the profile's bf16 is null): fp16.
    assert (r.precision, r.compute_dtype, r.threads) == ("fp16", "float16", None)


def test_gpu_profiles_and_explicit_values_resolve_as_written():
    _, h100 = _resolve(CPU, "model=qwen1.5b", "quant=nf4", "hardware=h100", "dry_run=true")
    assert (h100.device, h100.precision, h100.compute_dtype) == ("cuda", "bf16", "bfloat16")
    _, t4 = _resolve(CPU, "model=qwen1.5b", "hardware=t4", "dry_run=true")
    assert (t4.precision, t4.compute_dtype) == ("fp16", "float16")
    _, pinned = _resolve(CPU, "model=qwen1.5b", "quant=nf4", "hardware=h100", "dry_run=true",
                         "train.precision=fp32", "quant.compute_dtype=float16")
    assert (pinned.precision, pinned.compute_dtype) == ("fp32", "float16")


def test_backend_auto_takes_unsloth_only_with_a_real_gpu_and_the_package():
    assert _resolve(H100_UNSLOTH, "model=qwen1.5b")[1].backend == "unsloth"
    assert _resolve(H100, "model=qwen1.5b")[1].backend == "hf"
    assert _resolve(H100_UNSLOTH, "model=qwen1.5b", "train.backend=hf")[1].backend == "hf"
    # Planning for a GPU profile on a CPU machine: unsloth cannot run here, so hf.
    cpu_unsloth = dataclasses.replace(CPU, installed=PKGS | {"unsloth"})
    assert _resolve(cpu_unsloth, "model=qwen1.5b", "hardware=h100", "dry_run=true")[1].backend \
        == "hf"


def test_auto_batch_is_the_largest_divisor_of_the_effective_batch_that_fits():
    cfg, r = _resolve(CPU, "model=qwen3b", "hardware=t4", "dry_run=true")
    model, lora, quant, train = r.planner_inputs(cfg)
    eff = cfg.train.effective_batch
    assert r.batch_size * r.grad_accum == eff
    assert estimate(model, lora, quant, train, dict(r.hardware))["fits"]
    bigger = [d for d in range(r.batch_size + 1, eff + 1) if eff % d == 0]
    assert bigger, "the case must leave a larger divisor to reject"
    assert not estimate(model, lora, quant, {**train, "batch_size": bigger[0]},
                        dict(r.hardware))["fits"]


def test_explicit_batch_and_accumulation_are_kept_and_nothing_trains_without_a_batch():
    r = _resolve(CPU, "train.batch_size=4")[1]
    assert (r.batch_size, r.grad_accum) == (4, 4)
    r = _resolve(CPU, "train.batch_size=4", "train.grad_accum=3")[1]
    assert (r.batch_size, r.grad_accum) == (4, 3)
    r = _resolve(CPU, "train=none", "usecase=none")[1]
    assert (r.batch_size, r.grad_accum) == (None, None)


def test_resolved_is_frozen_and_the_plan_carries_it_unchanged():
    cfg, r = _resolve(CPU)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.batch_size = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        r.hardware["device"] = "cuda"  # type: ignore[index]
    plan = compile_plan(cfg, r)
    sft = plan.stage("sft").params["train"]
    assert (sft["batch_size"], sft["grad_accum"], sft["backend"], sft["precision"]) == (
        r.batch_size, r.grad_accum, r.backend, r.precision)
    assert plan.stage("sft").params["quant"]["compute_dtype"] == r.compute_dtype
    assert plan.run["threads"] == r.threads and plan.run["hardware"] == dict(r.hardware)


def test_compute_rule_and_compile_share_one_batch_search(monkeypatch):
    import llmops.planning.batch as batch
    from llmops.cli import check

    real, found = batch.resolve_batch, []

    def counting(*args, **kwargs):
        found.append(real(*args, **kwargs))
        return found[-1]

    monkeypatch.setattr(batch, "resolve_batch", counting)
    plan = check(["model=qwen3b", "lora=r16", "hardware=t4", "dry_run=true"])
    assert len(found) == 1  # the compute rule (a GPU profile) and compile_plan share it
    train = plan.stage("sft").params["train"]
    assert (train["batch_size"], train["grad_accum"]) == found[0]
    assert plan.stage("compute").params["train"] is train


def test_config_rules_import_neither_the_compiler_nor_torch():
    code = (
        "import sys\n"
        "from llmops.cli import to_plain\n"
        "from llmops.config.hydra.compose import compose\n"
        "from llmops.config.validate import validate_and_resolve\n"
        "validate_and_resolve(to_plain(compose(['model=qwen3b', 'hardware=t4', "
        "'dry_run=true'])))\n"
        "bad = [m for m in ('llmops.compiler.compile', 'torch', 'transformers') "
        "if m in sys.modules]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_sft_stage_does_not_re_resolve_an_auto_backend(tmp_path):
    from llmops.core.context import StageContext
    from llmops.errors import StageError
    from llmops.stages import sft

    params = {"model": {"hub_id": None}, "lora": None, "quant": {"type": "none"},
              "train": {"backend": "auto", "seed": 0}}
    with pytest.raises(StageError, match=r"auto is resolved by the compiler"):
        sft.run(params, {"data": tmp_path, "base": tmp_path}, tmp_path / "out",
                StageContext(run_dir=tmp_path, show_progress=False))


def test_cpu_threads_apply_the_resolved_count_and_restore_it():
    import torch

    from llmops.backends.common import cpu_threads
    from llmops.backends.hf import set_cpu_threads
    from llmops.core.context import StageContext

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with cpu_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with cpu_threads(None):
            assert torch.get_num_threads() == 2
        set_cpu_threads(StageContext(run_dir=".", threads=None))
        assert torch.get_num_threads() == 2
        set_cpu_threads(StageContext(run_dir=".", threads=1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# ---- the stage table ----


def test_every_stage_module_writes_the_report_the_table_names():
    for kind in STAGE_ORDER:
        module = importlib.import_module(stage_module(kind))
        assert module.REPORT_NAME == report_name(kind), kind
    assert stage_module("base") == "llmops.stages.tiny_base"  # the kind, fingerprinted, stays
    assert report_name("sft") == "training_report.json"  # what compare and W&B read
    with pytest.raises(KeyError):
        report_name("nope")


def test_compile_plan_adds_stages_in_table_order_and_evaluates_the_last_tuned_model():
    assert set(BUILDERS) == set(STAGE_ORDER)
    cfg, r = _resolve(CPU, "train=sft_dpo", "merge=ties", "eval=lm_eval", "deploy=openai")
    plan = compile_plan(cfg, r)
    kinds = [s.kind for s in plan.stages]
    assert kinds == ["decide", "compute", "base", "data", "sft", "dpo", "merge", "eval_base",
                     "lm_eval", "eval", "export", "gguf", "deploy"]
    assert kinds == [k for k in STAGE_ORDER if k in kinds]
    assert TUNED_STAGES == ("merge", "grpo", "kto", "simpo", "orpo", "dpo", "sft")
    for name in ("lm_eval", "eval", "export"):
        assert "merge" in plan.stage(name).needs, name
    assert [s.report for s in plan.stages] == [report_name(k) for k in kinds]


def test_sweep_summary_and_compare_name_the_same_swept_keys():
    from llmops.cli.sweep import swept
    from llmops.compare import swept_columns
    from llmops.tracking.jobs import override_params

    jobs = [{"dir": "0", "overrides": ["lora=r8", "seed=1"]},
            {"dir": "1", "overrides": ["lora=r16", "seed=1", "train.epochs=2"]}]
    labels = swept(jobs)
    assert labels == {"0": ["lora=r8"], "1": ["lora=r16", "train.epochs=2"]}
    rows = [{"params": override_params(j["overrides"]), "swept": []} for j in jobs]
    assert swept_columns(rows) == ["lora", "train.epochs"]


def test_one_multirun_test_answers_the_cli_metrics_and_wandb(tmp_path):
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from llmops.cli.sweep import job_context
    from llmops.tracking.jobs import multirun_job, sweep_info

    assert multirun_job() is None and job_context() is None
    assert sweep_info(tmp_path / "run") is None
    cfg = compose(["hydra.mode=MULTIRUN", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                  return_hydra_config=True).copy()
    with open_dict(cfg):
        cfg.hydra.job.num = 3
    HydraConfig.instance().set_config(cfg)
    try:
        folder = (tmp_path / "sweep").resolve()
        assert multirun_job() == (folder, 3)
        assert sweep_info(tmp_path / "elsewhere") == (folder, 3)
        assert job_context() == {"sweep": f"{folder.parent.name}/{folder.name}",
                                 "sweep_dir": str(folder), "job_num": 3}
    finally:
        HydraConfig.instance().cfg = None


# ---- fingerprint stability ----

# Recorded with the code BEFORE this change (commit 164ecb2), under the fixed environments above.
# Fingerprints are the store's keys: a changed value silently invalidates every user's cache. Only
# a deliberate change (a new llmops version, a new param) may update them. Updated once on purpose:
# the tiny model's recorded facts were wrong (its embeddings were always tied while tiny.yaml said
# tie_embeddings: false, and params said 115,000 for 106,816), and the base stage now receives
# tie_word_embeddings; every tiny-model stage was rebuilt once. The hub-model plans are unchanged.
# Then llmops 0.2.0 (the data form changed: OpenAI rows with tools/tool_calls, a new tiny
# template): every fingerprint changes once, so no 0.1 entry is reused by 0.2 code.
# Updated once more on purpose (issue 12, evaluation that fits the test split): eval_base and eval
# take new params (worst_examples; resolved auto gates, gate_mode, confidence) and write new
# reports, so they and the stages after them (export, gguf, deploy) are rebuilt once; data, sft,
# dpo, merge and lm_eval keep their fingerprints.
# Updated once more on purpose (issue 13, the model's own chat template): the hub presets now name
# their family's real template (model.chat_template qwen2_5 / llama3_1 / llama3_2 instead of
# chatml / llama3) and train on it with an assistant-only mask, so every stage of a hub-model plan
# changes once; the tiny model's plans keep their fingerprints.
# And once more (issue 13): a row through a real template with tool schemas is ~800-950 tokens, so
# the hub presets' train.max_length / data.max_length default to their model's
# recommended_max_length, 1024 (the tiny model keeps 512): the qwen plans change once; the llama8b
# T4 case pins train.max_length=512 to keep planning the same run.
# And once more (issue 20, hostile inputs): the deploy stage takes limits.http_total_seconds (each
# smoke request in all) and deploy.openai.allow_public_bind, so the deploy pin changes; deploy
# always runs anyway, and no other stage changes.
# Updated once more on purpose (issue 19, one message form): rows reach every template with call
# arguments as objects and the data stage measures what sft trains on; data (also its new preview
# param), sft, dpo, eval_base and eval carry the stage table's recipe (MESSAGE_FORM 2), so they
# and the stages after them (merge, lm_eval, export, gguf, deploy) are rebuilt once; decide,
# compute and base keep their fingerprints.
# And once more (issue 20, hostile data rows): the data stage's params carry the limits it works
# under (limits.row_bytes, json_depth, pattern_seconds, template_seconds, glob_files_warn), so the
# data stage and every stage after it change once.
# And once more (issue 19, bounded eval): eval_base, eval and lm_eval take eval.token_budget and
# eval.logits_mb (lm_eval also train.max_length), so they and the stages after them change once.
# And once more (issue 19, every stage planned): the compute stage's params carry the per-stage
# memory plan (stages), so compute changes in every case; a CPU is now held to its own memory, so
# the qwen3b case plans on a 512 GB CPU (on the 15.6 GB one it is refused at compile time).
# And once more (issue 22, the data of 2026): assistant messages carry reasoning_content and chat
# rows a label (MESSAGE_FORM 3), and the data params gain on_unsupported, so data, sft, dpo,
# eval_base and eval (and the stages after them) change once; decide, compute and base keep theirs.
# And once more (issue 23, the data stage does not depend on the method): the sft_dpo case's data,
# sft and eval_base are now the default's (a method sweep shares them); its dpo stage takes the
# pairs params the data stage lost, so dpo and the stages after it (merge, eval, export) change.
FINGERPRINTS = {
    ("cpu", ()): {
        "decide": "2c736766fa02e413", "compute": "f8d6c456b0fc03fa", "base": "4278ac84084edaea",
        "data": "ec0516e4659c9a2a", "sft": "6c34316596314523", "eval_base": "29d6fd160086b5f9",
        "eval": "001b2b6fc3af5d30", "export": "b7bf9ba4d2305ecb",
    },
    ("cpu512", ("model=qwen3b", "lora=r16")): {
        "decide": "55bc55fd500c95ee", "compute": "48a16d26a121b7dc", "data": "2219ca379252ae31",
        "sft": "4cf4d7058ce8550b", "eval_base": "0b7a1d0b88772f60", "eval": "1187c48be607689c",
        "export": "a1db5304587b404a",
    },
    ("cpu", ("train=sft_dpo", "merge=ties")): {
        "decide": "2c736766fa02e413", "compute": "6fff2c7f864aed09", "base": "4278ac84084edaea",
        "data": "ec0516e4659c9a2a", "sft": "6c34316596314523", "dpo": "c7506996e97d62f8",
        "merge": "c6fff4c4397c3d26", "eval_base": "29d6fd160086b5f9", "eval": "686e0c19f0150452",
        "export": "d3197d0b58fad946",
    },
    ("cpu", ("deploy=openai",)): {
        "decide": "2c736766fa02e413", "compute": "540424edcde6f0ed", "base": "4278ac84084edaea",
        "data": "ec0516e4659c9a2a", "sft": "6c34316596314523", "eval_base": "29d6fd160086b5f9",
        "eval": "001b2b6fc3af5d30", "export": "b7bf9ba4d2305ecb", "gguf": "2b3f42e259444830",
        "deploy": "f5d4844a734527b3",
    },
    ("cpu", ("eval=lm_eval",)): {
        "decide": "2c736766fa02e413", "compute": "48930458bd582a8d", "base": "4278ac84084edaea",
        "data": "ec0516e4659c9a2a", "sft": "6c34316596314523", "eval_base": "29d6fd160086b5f9",
        "lm_eval": "aa4b1f6aec10db7a", "eval": "001b2b6fc3af5d30", "export": "b7bf9ba4d2305ecb",
    },
    ("cpu", ("model=llama8b", "hardware=t4", "dry_run=true", "quant=nf4",
             "train.max_length=512")): {
        "decide": "8f6fe2e6e88d7d6a", "compute": "f649ec307b02460c", "data": "627f98333c37579f",
        "sft": "2e93fe8f1238858f", "eval_base": "4437a8ac987dfc5e", "eval": "5c0e790c9adaa4ec",
        "export": "f1039827216d2343",
    },
    ("h100", ("model=qwen1.5b",)): {
        "decide": "4c2e77bb9e9c5cff", "compute": "f185b0de37cceac5", "data": "db3b7c21f1f16f63",
        "sft": "f75c781bd0139cdf", "eval_base": "36ec25865a6fc38b", "eval": "bffd428012d7cc66",
        "export": "71b9b5c737359ecb",
    },
}


@pytest.mark.parametrize("case", list(FINGERPRINTS), ids=lambda c: f"{c[0]}:{' '.join(c[1])}")
def test_stage_fingerprints_are_those_recorded_before_the_resolve_step(case):
    env = {"cpu": CPU, "cpu512": dataclasses.replace(CPU, memory_gb=512.0), "h100": H100}[case[0]]
    plan = compile_plan(*_resolve(env, *case[1]))
    assert {s.name: s.fingerprint[:16] for s in plan.stages} == FINGERPRINTS[case]
