"""The `distributed` group: its validation, its resolution, and the planner's sharding model."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmops.cli import to_plain
from llmops.compiler.compile import compile_plan
from llmops.config.hydra.compose import compose
from llmops.config.validate import validate_and_resolve
from llmops.env import Environment, Gpu
from llmops.errors import ConfigError
from llmops.planning.memory import GIB, estimate, param_groups
from llmops.planning.sharding import comm_seconds

PKGS = frozenset({"bitsandbytes", "wandb", "lm_eval", "llama_cpp"})
CPU = Environment(cpu_count=2, memory_gb=15.6, installed=PKGS)
A100 = Gpu("NVIDIA A100-SXM4-80GB", 79.2)
TWO_GPUS = Environment(gpus=(A100, A100), cpu_count=32, memory_gb=512.0,
                       installed=PKGS | {"unsloth"})


def _resolve(env: Environment, *overrides: str):
    return validate_and_resolve(to_plain(compose(list(overrides))), env)


def _problems(env: Environment, *overrides: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        _resolve(env, *overrides)
    return {p.key: p.message for p in info.value.problems}


def llmops(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    """Runs python -m llmops in a subprocess; returns it and the dry run's compute_plan.json."""
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    run_dir = tmp_path / "run"
    tmp_path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([sys.executable, "-m", "llmops", *args, f"hydra.run.dir={run_dir}"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    report = run_dir / "compute_plan.json"
    return r, json.loads(report.read_text()) if report.exists() else None


def compute_plan(compose_plan, *overrides: str) -> dict:
    """The compute stage's report (what a dry run writes to compute_plan.json) of a plan compiled
    in this process, for the comparisons that are no README command."""
    from llmops.stages.compute import plan

    _, compiled = compose_plan(list(overrides))
    return plan(compiled.stage("compute").params)


# ---- the README's commands, in a subprocess ----

def test_fsdp_on_8xa100_80g_plans_per_gpu_memory_well_under_the_one_gpu_figure(tmp_path,
                                                                              compose_plan):
    r, sharded = llmops(tmp_path / "fsdp", "model=llama8b", "quant=none", "distributed=fsdp",
                        "hardware=8xa100_80g", "dry_run=true")
    assert r.returncode == 0, r.stderr
    assert sharded["world_size"] == 8 and sharded["strategy"] == "fsdp"
    assert "fsdp x 8 processes" in r.stdout and "per device" in r.stdout
    single = compute_plan(compose_plan, "model=llama8b", "quant=none", "hardware=a100_80g",
                          "dry_run=true")
    assert single["world_size"] == 1
    assert sharded["total_gb"] < single["total_gb"] / 2
    # The same per-GPU batch: sharding alone cuts the weights 8-fold.
    assert sharded["parts_gb"]["weights"] == pytest.approx(single["parts_gb"]["weights"] / 8,
                                                           rel=0.01)
    assert sharded["all_devices_gb"] == pytest.approx(8 * sharded["total_gb"], abs=0.05)
    assert sharded["comm_time_s"] > 0 and single["comm_time_s"] == 0


def test_a_lora_plan_that_fits_one_a100_40g_lists_its_scale_out_options(tmp_path):
    """llama8b LoRA r16 in bf16 fits one A100 40 GB (~28 GB): no fix is needed, and the plan
    still shows what ddp (a replica per GPU, faster) and fsdp (sharded) on 8 of them give."""
    r, report = llmops(tmp_path, "model=llama8b", "quant=none", "hardware=a100_40g",
                       "dry_run=true")
    assert r.returncode == 0, r.stderr
    assert report["fits"] and report["fixes"] == []
    options = {o["override"]: o for o in report["scale_out"]}
    ddp, fsdp = (options[f"distributed={s} hardware=8xa100_40g"] for s in ("ddp", "fsdp"))
    assert ddp["gpus"] == fsdp["gpus"] == 8 and ddp["fits"] and fsdp["fits"]
    assert fsdp["per_gpu_gb"] < report["total_gb"] * 0.7
    assert ddp["run_time_h"] < report["run_time_h"] / 4  # 8 replicas share the epochs
    assert "scale out (the same training over several GPUs):" in r.stdout
    assert "distributed=fsdp hardware=8xa100_40g: 8 GPUs, ~" in r.stdout


def test_full_fine_tune_that_does_not_fit_one_a100_40g_lists_the_sharded_fix(tmp_path,
                                                                            compose_plan):
    r, _ = llmops(tmp_path, "model=llama8b", "quant=none", "lora=none", "hardware=a100_40g",
                  "dry_run=true")
    assert r.returncode == 2, r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert "- hardware: llama8b (full fine-tune" in out
    assert ("Fixes that fit: distributed=fsdp hardware=8xa100_40g (use distributed=fsdp on 8 "
            "GPUs: ~") in out
    # The fix it names fits when applied.
    fixed = compute_plan(compose_plan, "model=llama8b", "quant=none", "lora=none",
                         "distributed=fsdp", "hardware=8xa100_40g", "dry_run=true")
    assert fixed["fits"] and fixed["world_size"] == 8


# ---- resolution and compiled params ----

def test_auto_processes_are_the_profiles_gpus_and_one_on_a_cpu():
    _, r = _resolve(CPU, "model=llama8b", "distributed=fsdp", "hardware=8xh100", "dry_run=true")
    assert (r.distributed["nproc_per_node"], r.distributed["world_size"]) == (8, 8)
    assert r.distributed["backend"] == "nccl" and r.distributed["fsdp_version"] in (1, 2)
    _, r = _resolve(CPU, "distributed=ddp")
    assert (r.distributed["nproc_per_node"], r.distributed["backend"]) == (1, "gloo")


def test_ddp_params_reach_sft_and_keep_the_effective_batch_over_the_world():
    cfg, r = _resolve(CPU, "distributed=ddp", "distributed.nproc_per_node=2")
    plan = compile_plan(cfg, r)
    sft = plan.stage("sft").params
    assert sft["distributed"]["world_size"] == 2 and sft["distributed"]["backend"] == "gloo"
    assert sft["train"]["batch_size"] * sft["train"]["grad_accum"] * 2 == cfg.train.effective_batch
    assert plan.stage("compute").params["distributed"] == sft["distributed"]
    one = compile_plan(*_resolve(CPU))
    assert "distributed" not in one.stage("sft").params
    # Two processes on one host share its memory.
    from llmops.stages.compute import plan as compute_plan

    assert compute_plan(plan.stage("compute").params)["capacity_gb"] == pytest.approx(15.6 / 2)
    assert one.stage("sft").fingerprint != plan.stage("sft").fingerprint


def test_auto_backend_picks_hf_not_unsloth_for_several_processes():
    _, r = _resolve(TWO_GPUS, "model=qwen0.5b", "hardware=auto", "distributed=ddp")
    assert (r.backend, r.distributed["world_size"]) == ("hf", 2)
    _, r = _resolve(TWO_GPUS, "model=qwen0.5b", "hardware=auto")
    assert r.backend == "unsloth"


# ---- validation ----

def test_deepspeed_on_a_cpu_without_the_package_is_refused_with_the_fix():
    problems = _problems(CPU, "distributed=deepspeed_zero2")
    assert problems["distributed"] == (
        "'deepspeed_zero2' needs CUDA GPUs and pip install 'llmops[deepspeed]' (this plan trains "
        "on a CPU; deepspeed is not installed). Use "
        "distributed=ddp (gloo on a CPU) or distributed=fsdp, or add dry_run=true with a GPU "
        "profile (e.g. hardware=8xa100_80g) to plan it for another machine.")


def test_more_processes_than_devices_is_refused():
    problems = _problems(CPU, "distributed=ddp", "distributed.nproc_per_node=3")
    assert problems["distributed.nproc_per_node"].startswith(
        "3 processes per node, but this CPU has 2 cores (one gloo process per core at most). "
        "Use distributed.nproc_per_node=2 or less")
    problems = _problems(CPU, "model=llama8b", "distributed=fsdp", "hardware=8xh100",
                         "distributed.nproc_per_node=16", "dry_run=true")
    assert "but 8xh100 has 8 GPU(s)" in problems["distributed.nproc_per_node"]


def test_unsloth_with_several_processes_is_refused():
    problems = _problems(TWO_GPUS, "model=qwen0.5b", "hardware=auto", "train.backend=unsloth",
                         "distributed=ddp")
    assert problems["train.backend"] == (
        "'unsloth' trains on one GPU, but distributed=ddp starts 2 processes. Use "
        "train.backend=hf with distributed, or distributed=none with unsloth.")


def test_qlora_sharding_needs_float_storage_of_the_4bit_weights():
    args = ("model=llama8b", "hardware=8xa100_80g", "dry_run=true")
    problems = _problems(CPU, *args, "quant=int8", "distributed=fsdp")
    assert problems["quant.type"].startswith("'int8' cannot be sharded by distributed=fsdp")
    _resolve(CPU, *args, "quant=nf4", "distributed=fsdp")  # bf16 storage on a bf16 GPU
    _resolve(CPU, *args, "quant=int8", "distributed=ddp")  # a whole replica per GPU
    problems = _problems(CPU, "quant=nf4", "distributed=fsdp")  # a CPU computes in float32
    assert "the compute dtype here is float32" in problems["quant.type"]


def test_cpu_offload_without_sharding_and_nodes_without_a_rendezvous_are_refused(monkeypatch):
    problems = _problems(CPU, "distributed=ddp", "distributed.cpu_offload=true")
    assert problems["distributed.cpu_offload"].startswith(
        "true is not supported with distributed=ddp (strategy ddp)")
    for name in ("SLURM_JOB_ID", "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    problems = _problems(CPU, "distributed=ddp", "distributed.nnodes=2")
    assert problems["distributed.nnodes"].startswith(
        "2 nodes need a rendezvous, and none is set: run under SLURM")
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")  # a bare rendezvous: every node would run
    assert "distributed.nnodes" in _problems(CPU, "distributed=ddp", "distributed.nnodes=2")
    monkeypatch.setenv("SLURM_JOB_ID", "42")  # one rank per SLURM task
    _resolve(CPU, "distributed=ddp", "distributed.nnodes=2")


def test_none_with_several_processes_is_refused():
    problems = _problems(CPU, "distributed.nproc_per_node=2")
    assert problems["distributed.strategy"].startswith("'none' runs one process")


# ---- the sharding model against the ZeRO paper's formulas ----

MODEL = {"params": 8_030_261_248, "num_layers": 32, "hidden_size": 4096,
         "intermediate_size": 14336, "num_attention_heads": 32, "num_kv_heads": 8,
         "vocab_size": 128256, "tie_embeddings": False}
TRAIN = {"batch_size": 1, "grad_accum": 1, "max_length": 512, "precision": "bf16",
         "optimizer": "adamw_torch", "backend": "hf"}
GPU = {"device": "cuda", "gpu_memory_gb": 80, "num_gpus": 8, "tflops": 312,
       "interconnect_gbps": 2400}


def _dist(strategy: str, n: int, **kw) -> dict:
    return {"name": strategy, "strategy": strategy, "launcher": "accelerate", "nproc_per_node": n,
            "nnodes": 1, "world_size": n, "cpu_offload": False, "activation_checkpointing": False,
            "sharding_strategy": "full_shard", "backend": "nccl", "fsdp_version": 2, **kw}


@pytest.mark.parametrize(("strategy", "bytes_per_param"), [
    ("zero2", lambda n: 2 + 14 / n), ("zero3", lambda n: 16 / n), ("fsdp", lambda n: 16 / n)])
@pytest.mark.parametrize("n", [2, 8])
def test_model_states_per_device_follow_the_zero_paper(strategy, bytes_per_param, n):
    est = estimate(MODEL, None, {"type": "none"}, TRAIN, GPU, distributed=_dist(strategy, n))
    states = sum(est["parts_gb"][k] for k in ("weights", "lora", "gradients", "optimizer"))
    psi = param_groups(MODEL)["total"]
    assert states == pytest.approx(psi * bytes_per_param(n) / GIB, abs=0.05)


def test_ddp_keeps_a_replica_plus_buckets_and_offload_empties_the_device_states():
    one = estimate(MODEL, None, {"type": "none"}, TRAIN, GPU)
    ddp = estimate(MODEL, None, {"type": "none"}, TRAIN, GPU, distributed=_dist("ddp", 8))
    assert ddp["parts_gb"]["buckets"] == one["parts_gb"]["gradients"]
    assert ddp["total_gb"] > one["total_gb"]
    off = estimate(MODEL, None, {"type": "none"}, TRAIN, GPU,
                   distributed=_dist("zero3", 8, cpu_offload=True))
    assert off["parts_gb"]["optimizer"] == 0 and off["host_gb"] > 0
    on = estimate(MODEL, None, {"type": "none"}, TRAIN, GPU, distributed=_dist("zero3", 8))
    assert off["total_gb"] < on["total_gb"]


def test_comm_time_is_the_ring_all_reduce_and_zero3_adds_the_param_gathers():
    notes: list[str] = []
    facts = {"trainable": 1e9, "a16": 2.0, "full": True, "param_bytes": 2e9}
    parts = {"gradients": 2e9}
    ddp = comm_seconds(facts, parts, _dist("ddp", 8), 1, GPU, notes)
    assert ddp == pytest.approx(2 * 7 / 8 * 2e9 / (2400e9 / 8))
    zero3 = comm_seconds(facts, parts, _dist("zero3", 8), 1, GPU, notes)
    assert zero3 == pytest.approx(1.5 * ddp)  # ZeRO paper sec. 7: 3 Psi vs 2 Psi
    assert comm_seconds(facts, parts, _dist("ddp", 1), 1, GPU, notes) == 0
    slow = comm_seconds(facts, parts, _dist("ddp", 8), 1, {**GPU, "interconnect_gbps": 256},
                        notes)
    assert slow == pytest.approx(ddp * 2400 / 256)


def test_a_plan_that_fits_no_multi_gpu_profile_gets_no_sharded_fix():
    env = dataclasses.replace(CPU)
    problems = _problems(env, "model=llama8b", "quant=none", "lora=none", "hardware=t4",
                         "dry_run=true")
    assert "use distributed=fsdp" not in problems["hardware"]
