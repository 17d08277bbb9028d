"""The memory plan of every stage (llmops.planning.stage_memory), its fit check and fixes, the
capacity a run may use (cgroup, SLURM, sweep jobs) and threads chosen by work."""

from __future__ import annotations

import llmops.conf
import pytest
from test_planning import CONF, NONE, R16, TRAIN, _yaml

from llmops.cli import to_plain
from llmops.config.hydra.compose import compose
from llmops.config.hydra.groups import option_files
from llmops.config.resolve import SMALL_WORK, cpu_threads, stage_inputs, step_work
from llmops.config.validate import validate_and_resolve
from llmops.env import (
    Environment,
    cgroup_limit_gb,
    concurrent_jobs,
    memory_capacity,
    shared_by,
    slurm_limit_gb,
)
from llmops.errors import ConfigError
from llmops.planning import memory, stage_memory
from llmops.planning.memory import GIB
from llmops.planning.stage_fixes import stage_fixes
from llmops.planning.stage_memory import (
    capacities,
    fitting,
    gguf_bytes,
    kv_cache_bytes,
    stage_parts,
)
from llmops.planning.stage_memory import (
    stage_memory as plan_stage_memory,
)

PKGS = frozenset({"bitsandbytes", "wandb", "lm_eval", "llama_cpp"})
CPU24 = Environment(cpu_count=2, memory_gb=23.5, installed=PKGS)
CPU_BIG = Environment(cpu_count=2, memory_gb=512.0, installed=PKGS)


def _resolve(env: Environment, *overrides: str):
    return validate_and_resolve(to_plain(compose(list(overrides))), env)


def _inputs(*overrides: str) -> dict:
    cfg, _ = _resolve(CPU_BIG, *overrides)
    return stage_inputs(cfg)


# ---- which stages are planned ----

def test_the_default_chain_plans_its_model_loading_stages():
    assert _inputs()["stages"] == ["sft", "eval_base", "eval", "export"]
    full = _inputs("train=sft_dpo", "merge=linear", "eval=lm_eval", "deploy=openai")
    assert full["stages"] == ["sft", "dpo", "merge", "eval_base", "lm_eval", "eval", "gguf",
                              "deploy"]
    assert _inputs("train=none")["stages"] == ["eval_base"]


# ---- per-stage arithmetic ----

def test_kv_cache_and_gguf_sizes_are_the_published_arithmetic():
    qwen7b = _yaml("model", "qwen7b")
    # 28 layers x 2 (k, v) x 4 KV heads x 128 dims x 2 bytes = 56 KiB per token.
    assert kv_cache_bytes(qwen7b, 1, 2.0) == 28 * 2 * 512 * 2
    n = memory.param_groups(qwen7b)["total"]
    assert gguf_bytes(qwen7b, "f16") == 2 * n
    assert gguf_bytes(qwen7b, "q4_k_m") < gguf_bytes(qwen7b, "q8_0") < gguf_bytes(qwen7b, "f16")


def test_deploy_holds_the_served_file_and_its_context():
    qwen3b = _yaml("model", "qwen3b")
    inputs = _inputs("deploy=openai")
    parts, _, _ = stage_parts("deploy", qwen3b, R16, NONE, TRAIN, {"device": "cpu"}, inputs)
    quant = inputs["deploy"]["serve_quantization"]
    assert parts["weights"] == gguf_bytes(qwen3b, quant)
    assert parts["kv_cache"] == kv_cache_bytes(qwen3b, qwen3b["context_length"], 2.0)
    short = {**qwen3b, "context_length": 4096}
    assert stage_parts("deploy", short, R16, NONE, TRAIN, {"device": "cpu"},
                       inputs)[0]["kv_cache"] * 8 == pytest.approx(parts["kv_cache"])


def test_merge_holds_float32_weights_and_a_copy_only_for_16_bit():
    llama8b = _yaml("model", "llama8b")
    fp32 = stage_memory.merge_parts(llama8b, R16, "float32")
    bf16 = stage_memory.merge_parts(llama8b, R16, "bfloat16")
    n = memory.param_groups(llama8b)["total"]
    assert fp32["weights"] == 4 * n and fp32["copy"] == 0
    assert bf16["copy"] == 2 * n
    assert fp32["lora"] == 4 * memory.lora_params(llama8b, R16)


def test_dpo_holds_chosen_and_rejected_and_a_reference_only_for_a_full_finetune():
    qwen = _yaml("model", "qwen0.5b")
    t4 = _yaml("hardware", "t4")
    inputs = {"dpo": {"batch_size": None}}
    lora_parts, _, _ = stage_memory.dpo_parts(qwen, R16, NONE, TRAIN, t4, inputs["dpo"])
    full_parts, _, _ = stage_memory.dpo_parts(qwen, None, NONE, TRAIN, t4, inputs["dpo"])
    assert "reference" not in lora_parts
    assert full_parts["reference"] == full_parts["weights"]
    sft = memory.memory_parts(qwen, R16, NONE, {**TRAIN, "fused_loss": False}, t4)[0]
    assert lora_parts["activations"] > 1.9 * sft["activations"]  # twice the rows


def test_orpo_and_simpo_hold_one_model_even_for_a_full_finetune():
    qwen = _yaml("model", "qwen0.5b")
    t4 = _yaml("hardware", "t4")
    dpo, _, _ = stage_parts("dpo", qwen, None, NONE, TRAIN, t4, {"dpo": {"batch_size": None}})
    for kind in ("orpo", "simpo"):
        parts, _, notes = stage_parts(kind, qwen, None, NONE, TRAIN, t4,
                                      {kind: {"batch_size": None}})
        assert "reference" not in parts and "reference" in dpo
        assert parts["activations"] == dpo["activations"]  # chosen + rejected, as DPO
        assert any("reference-free" in n for n in notes)
        inputs = _inputs(f"train=sft_{kind}", f"train.{kind}.batch_size=2")
        assert inputs["stages"][:2] == ["sft", kind] and inputs[kind] == {"batch_size": 2}
    assert "orpo" not in _inputs("train=sft_dpo")  # the other plans' compute params stay
    kto, _, notes = stage_parts("kto", qwen, None, NONE, TRAIN, t4, {"kto": {"batch_size": None}})
    assert kto["reference"] == kto["weights"]  # KTO keeps a reference, as DPO
    assert any("KL term" in n for n in notes)


def test_eval_grows_with_the_vocabulary_and_is_bounded_by_the_token_budget():
    qwen = _yaml("model", "qwen0.5b")
    cpu = {"device": "cpu"}
    ev = {"batch_size": 32, "max_new_tokens": 96, "token_budget": 8192, "logits_mb": 256}
    small, _ = stage_memory.eval_parts(qwen, NONE, ev, cpu, 1024, False)
    big_vocab = {**qwen, "vocab_size": qwen["vocab_size"] * 4}
    assert sum(stage_memory.eval_parts(big_vocab, NONE, ev, cpu, 1024, False)[0].values()) \
        > sum(small.values())
    huge, _ = stage_memory.eval_parts(qwen, NONE, {**ev, "token_budget": 65536}, cpu, 1024, False)
    assert sum(huge.values()) > sum(small.values())


def test_a_cpu_stage_holds_device_and_host_in_one_memory():
    tiny = _yaml("model", "tiny")
    plan = plan_stage_memory(tiny, R16, NONE, TRAIN, {"device": "cpu", "memory_gb": 16},
                             _inputs())
    for s in plan.values():
        assert s["device_gb"] == s["host_gb"]
        assert s["host_gb"] == pytest.approx(sum(s["parts_gb"].values()), abs=0.05)


def test_a_gpu_plan_keeps_host_stages_off_the_gpu_and_checks_the_host_only_here():
    a100 = {**_yaml("hardware", "a100_40g"), "memory_gb": 8.0}
    qwen3b = _yaml("model", "qwen3b")
    plan = plan_stage_memory(qwen3b, R16, NONE, {**TRAIN, "batch_size": 1}, a100,
                             _inputs("deploy=openai"))
    assert plan["gguf"]["device_gb"] == 0 and plan["gguf"]["host_gb"] > 8
    assert capacities(a100)[1] is None  # a named profile plans for another machine
    assert fitting(plan, a100)["fits"]
    here = {**a100, "name": "auto"}
    assert capacities(here)[1] == pytest.approx(8 * memory.USABLE_FRACTION)
    assert "gguf" in fitting(plan_stage_memory(qwen3b, R16, NONE, {**TRAIN, "batch_size": 1},
                                               here, _inputs("deploy=openai")), here)["over"]


# ---- fixes of the stage that does not fit ----

def test_eval_fixes_name_the_eval_knobs_with_their_own_estimates():
    qwen = _yaml("model", "qwen0.5b")
    ev = {"batch_size": 32, "max_new_tokens": 96, "token_budget": 65536, "logits_mb": 256}
    inputs = {**_inputs(), "eval": ev, "max_length": 2048}
    gpu = {"name": "g", "device": "cuda", "gpu_name": "G", "bf16": True, "gpu_memory_gb": 80.0}
    need = sum(stage_parts("eval_base", qwen, R16, NONE, TRAIN, gpu, inputs)[0].values()) / GIB
    weights = stage_parts("eval_base", qwen, R16, NONE, TRAIN, gpu, inputs)[0]["weights"] / GIB
    gpu["gpu_memory_gb"] = (weights + need) / 2 / memory.USABLE_FRACTION
    fixes = stage_fixes("eval_base", qwen, R16, NONE, TRAIN, gpu, inputs, presets={},
                        catalog=option_files())
    by = {f["override"].split("=")[0]: f for f in fixes}
    assert by["eval.token_budget"]["fits"] and by["eval.token_budget"]["total_gb"] < need
    assert fixes[-1] == {"override": "eval=none", "stage": "eval_base", "total_gb": 0.0,
                         "fits": True, "changes": 1}
    usable = gpu["gpu_memory_gb"] * memory.USABLE_FRACTION
    assert all(f["total_gb"] <= usable + 0.05 for f in fixes if f["fits"])


def test_a_served_gguf_that_does_not_fit_is_fixed_by_the_smallest_gguf_type():
    qwen3b = _yaml("model", "qwen3b")
    inputs = _inputs("deploy=openai")  # writes and serves f16
    host = {"name": "auto", "device": "cpu", "memory_gb": 512.0}
    need = sum(stage_parts("deploy", qwen3b, R16, NONE, TRAIN, host, inputs)[0].values()) / GIB
    host["memory_gb"] = need * 0.8 / memory.USABLE_FRACTION

    def fixes(knobs: dict) -> list[dict]:
        return stage_fixes("deploy", qwen3b, R16, NONE, TRAIN, host, knobs, presets={},
                           catalog=option_files())

    first = fixes(inputs)[0]
    assert first["override"] == "deploy.gguf.quantization=[q4_k_m]" and first["fits"]
    assert first["total_gb"] < need * 0.6
    small = {**inputs, "gguf": {**inputs["gguf"], "quantization": ["q4_k_m"]},
             "deploy": {**inputs["deploy"], "serve_quantization": "q4_k_m"}}
    assert not any(f["override"].startswith("deploy.gguf") for f in fixes(small))  # it is so


def _refused(env: Environment, *overrides: str) -> str:
    with pytest.raises(ConfigError) as exc:
        _resolve(env, *overrides)
    assert exc.value.exit_code == 2
    (problem,) = exc.value.problems
    assert problem.key == "hardware"
    return problem.message


def test_an_eval_that_does_not_fit_a_gpu_profile_is_refused_with_the_eval_fix():
    msg = _refused(CPU24, "train=none", "model=qwen7b", "hardware=t4", "dry_run=true")
    assert msg.startswith("stage eval_base of qwen7b needs ~")
    assert "on t4 (NVIDIA T4, 16 GB, ~14.7 usable): weights 14.2" in msg
    assert "quant=nf4 (~" in msg and "eval=none (skips the stage)" in msg


def test_an_eval_that_does_not_fit_this_cpu_is_refused_with_the_eval_fix():
    msg = _refused(CPU24, "train=none", "model=qwen7b", "dry_run=true")
    assert "of this machine's 23.5 GB (physical RAM, ~21.6 usable): weights 28.4" in msg
    assert "eval=none (skips the stage)" in msg and "model=qwen3b (~" in msg


def test_qwen3b_planned_on_this_24gb_cpu_is_refused_with_its_fixes():
    msg = _refused(CPU24, "model=qwen3b", "lora=r16", "dry_run=true")
    assert "qwen3b (LoRA r16, batch 1 x 1024 tokens) needs ~26.3 GB" in msg
    assert "Fixes that fit: " in msg and "quant=nf4 (~" in msg
    _resolve(CPU_BIG, "model=qwen3b", "lora=r16", "dry_run=true")  # fits a larger machine


def test_compute_plan_records_each_stage_and_the_largest(compose_plan):
    from llmops.stages.compute import plan

    _, p = compose_plan(["hardware=cpu"])
    report = plan(p.stage("compute").params)
    assert set(report["stages"]) == {"sft", "eval_base", "eval", "export"}
    assert report["largest_stage"] == max(report["stages"],
                                          key=lambda s: report["stages"][s]["host_gb"])
    assert report["stages_fit"] and report["stage_fixes"] == {}
    assert report["capacity_from"] == "physical RAM"
    assert "parts_gb" in report and "total_gb" in report  # the training keys stay


# ---- capacity ----

def test_cgroup_v2_limit_of_the_process_group_and_its_parents(tmp_path):
    (tmp_path / "job" / "step").mkdir(parents=True)
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "job" / "memory.max").write_text(str(6 * 2**30))
    (tmp_path / "job" / "step" / "memory.max").write_text("max\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/job/step\n")
    gb, where = cgroup_limit_gb(tmp_path, proc)
    assert gb == 6 and where == str(tmp_path / "job" / "memory.max")
    (tmp_path / "job" / "memory.max").write_text("max\n")
    assert cgroup_limit_gb(tmp_path, proc) is None  # 'max' everywhere: unlimited


def test_cgroup_v1_limit_and_its_no_limit_value(tmp_path):
    (tmp_path / "memory" / "slurm").mkdir(parents=True)
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/slurm\n0::/\n")
    assert cgroup_limit_gb(tmp_path, proc) is None
    (tmp_path / "memory" / "slurm" / "memory.limit_in_bytes").write_text(str(3 * 2**30))
    assert cgroup_limit_gb(tmp_path, proc)[0] == 3


def test_slurm_allocation_per_node_and_per_cpu():
    assert slurm_limit_gb({"SLURM_MEM_PER_NODE": "8192"}) == (8.0, "SLURM_MEM_PER_NODE")
    gb, where = slurm_limit_gb({"SLURM_MEM_PER_CPU": "2048", "SLURM_CPUS_ON_NODE": "3"})
    assert gb == 6.0 and "SLURM_CPUS_ON_NODE" in where
    assert slurm_limit_gb({"SLURM_MEM_PER_CPU": "1024", "SLURM_CPUS_PER_TASK": "2"})[0] == 2.0
    assert slurm_limit_gb({}) is None


def test_capacity_is_the_least_of_ram_cgroup_and_slurm(tmp_path):
    (tmp_path / "memory.max").write_text(str(12 * 2**30))
    proc = tmp_path / "cgroup"
    proc.write_text("0::/\n")
    assert memory_capacity(64.0, tmp_path, proc, {}) == (12.0, str(tmp_path / "memory.max"))
    assert memory_capacity(64.0, tmp_path, proc, {"SLURM_MEM_PER_NODE": "4096"}) == (
        4.0, "SLURM_MEM_PER_NODE")
    assert memory_capacity(2.0, tmp_path, proc, {}) == (2.0, "physical RAM")


def test_sweep_jobs_at_once_share_the_memory():
    joblib = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
              "n_jobs": 4}
    assert concurrent_jobs(joblib, 12, 2) == 4
    assert concurrent_jobs(joblib, 3, 2) == 3
    assert concurrent_jobs({**joblib, "n_jobs": -1}, 12, 8) == 8
    assert concurrent_jobs({"_target_": "hydra._internal.BasicLauncher"}, 12, 8) == 1
    env = shared_by(CPU24, 4)
    assert env.memory_gb == pytest.approx(5.9, abs=0.05)
    assert env.memory_source == "physical RAM / 4 sweep jobs at once"


def test_the_share_a_job_may_use_reaches_the_fit_check():
    small = shared_by(CPU24, 8)
    msg = _refused(small, "dry_run=true", "model=qwen0.5b")
    assert "physical RAM / 8 sweep jobs at once" in msg


# ---- threads by work ----

def test_threads_follow_tokens_times_parameters_and_the_lm_head():
    tiny = _yaml("model", "tiny")
    assert cpu_threads("cpu", tiny, 16 * 512) == 1
    real_vocab = {"params": 10_000_000, "vocab_size": 151_936, "hidden_size": 64}
    assert real_vocab["params"] < 20_000_000  # under the old parameter threshold
    assert step_work(real_vocab, 16 * 512) > SMALL_WORK
    assert cpu_threads("cpu", real_vocab, 16 * 512) is None  # all cores
    assert cpu_threads("cuda", tiny, 16 * 512) is None
    assert cpu_threads("cpu", tiny, 10**9) is None  # enough tokens make any model worth it


def test_benchmark_and_presets_plan_every_stage():
    for name in llmops.conf.options("model"):
        model = llmops.conf.load("model", name)
        model.pop("pretrain", None)
        if not model.get("params"):
            continue
        plan = plan_stage_memory(model, R16, NONE, {**TRAIN, "batch_size": 1},
                                 _yaml("hardware", "a100_80g"), _inputs("deploy=openai"))
        assert all(s["device_gb"] + s["host_gb"] > 0 for s in plan.values()), name


def test_a_joblib_sweep_plans_each_point_with_its_share_and_tells_its_jobs(monkeypatch):
    import os

    import llmops.env
    from llmops.cli.preflight import preflight
    from llmops.env import CONCURRENT_JOBS_ENV

    monkeypatch.setattr(llmops.env, "detect", lambda: CPU24)
    monkeypatch.setenv(CONCURRENT_JOBS_ENV, "")  # restored afterwards
    with pytest.raises(ConfigError) as exc:
        preflight(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=4",
                   "lora=r8,r16,r32,r64", "model=qwen0.5b", "dry_run=true"])
    assert len(exc.value.problems) == 4
    assert all("(physical RAM / 4 sweep jobs at once, ~5.4 usable)" in p.message
               for p in exc.value.problems)
    assert os.environ[CONCURRENT_JOBS_ENV] == "4"  # what the jobs it launches plan with
    # One job at a time (the basic launcher) has the whole machine: the same points fit.
    monkeypatch.setenv(CONCURRENT_JOBS_ENV, "")
    assert preflight(["-m", "lora=r8,r16", "model=qwen0.5b", "dry_run=true"]) is not None


def test_ranks_on_one_cpu_share_its_memory():
    tiny = _yaml("model", "tiny")
    cpu = {"device": "cpu", "memory_gb": 16}
    one = plan_stage_memory(tiny, R16, NONE, TRAIN, cpu, _inputs())["sft"]
    dist = {"strategy": "ddp", "nproc_per_node": 2, "world_size": 2, "activation_checkpointing":
            False}
    two = plan_stage_memory(tiny, R16, NONE, TRAIN, cpu, _inputs(), dist)["sft"]
    assert two["parts_gb"]["other_ranks"] == pytest.approx(one["host_gb"], abs=0.02)
    assert two["host_gb"] == pytest.approx(2 * one["host_gb"], abs=0.02)


def test_the_dry_run_prints_each_stage_with_its_fit(compose_plan):
    from rich.console import Console

    from llmops.compiler.render import compute_table
    from llmops.stages.compute import plan

    _, p = compose_plan(["hardware=cpu", "deploy=openai"])
    report = plan(p.stage("compute").params)
    console = Console(width=160, record=True)
    console.print(compute_table(report))
    text = console.export_text()
    largest = max(report["stages"], key=lambda s: report["stages"][s]["host_gb"])
    # sft (0.75 GB) over deploy (0.73: the tiny model's llama.cpp server, 0.08, beside the stage
    # process)
    assert report["largest_stage"] == largest == "sft"
    assert f"memory by stage (largest: {largest}; fits; capacity from physical RAM)" in text
    for stage in ("sft", "eval_base", "eval", "export", "gguf", "deploy"):
        s = report["stages"][stage]
        row = next(line for line in text.splitlines() if line.startswith(f"│ {stage} "))
        assert f"{s['device_gb']:.2f}" in row and f"{s['host_gb']:.2f}" in row and "yes" in row


def test_stage_memory_benchmark_plans_its_gpu_branch():
    """The benchmark compares torch.cuda.max_memory_allocated on a GPU with device_gb: with no
    GPU here its GPU estimates must still build, on the device for the stages that run there."""
    import importlib.util

    path = CONF.parent / "benchmarks" / "stage_memory.py"
    spec = importlib.util.spec_from_file_location("stage_memory_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    est = bench._estimates(["hardware=a100_40g", "dry_run=true", "deploy=openai"])
    assert [s for s, e in est.items() if e["on"] == "device"] == ["sft", "eval_base", "eval"]
    assert all(e["device_gb"] > 0.8 for s, e in est.items() if e["on"] == "device")  # + CUDA
    assert all(e["device_gb"] == 0 and e["host_gb"] > 0 for e in est.values() if e["on"] == "host")
