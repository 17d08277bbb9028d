"""Cross-field rules of the `distributed` group: what the installed stack and the machine can run.

Pure: packages are probed through the Environment (``importlib.util.find_spec``), never imported.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from llmops.errors import Problem

if TYPE_CHECKING:
    from llmops.config.schema import AppConfig
    from llmops.env import Environment
    from llmops.config.resolve import Resolved

SHARDED = ("fsdp", "zero3")  # strategies that shard the parameters themselves
# FSDP and ZeRO-3 shard flat float tensors: bitsandbytes' 4-bit weights shard only when stored in
# a float dtype (bnb_4bit_quant_storage, bitsandbytes PR #970; PEFT's "FSDP+QLoRA" and
# "DeepSpeed ZeRO-3+QLoRA" guides), equal to the dtype of the rest of the model so one flat group
# holds them (accelerate 1.15 fsdp2_prepare_model leaves uint8-stored Params4bit unsharded).
# LLM.int8's Int8Params have no float storage, so int8 cannot be sharded.
QLORA_STORAGE = ("bfloat16", "float16")


def distributed_problems(cfg: AppConfig, env: Environment, resolved: Resolved) -> list[Problem]:
    """Returns every problem of the distributed group against the config, machine and stack.

    Args:
        cfg: The schema-valid config.
        env: Facts about this machine (installed packages, GPUs, CPU count).
        resolved: Its resolution (hardware, backend, compute dtype, the distributed group).
    """
    d, rd = cfg.distributed, resolved.distributed
    if cfg.train.method == "none":
        return []
    if d.strategy == "none":
        if d.nproc_per_node not in (1, "auto") or d.nnodes != 1:
            return [Problem("distributed.strategy", (
                f"'none' runs one process, but nproc_per_node={d.nproc_per_node} and "
                f"nnodes={d.nnodes} ask for more. Use distributed=ddp (or fsdp) with them, or "
                "leave distributed=none for one process."))]
        return []
    out: list[Problem] = []
    for rule in (_deepspeed, _fsdp_cpu, _devices, _unsloth, _quant, _offload, _nodes):
        out += rule(cfg, env, resolved)
    if rd["backend"] == "nccl" and resolved.device != "cuda":
        out.append(Problem("distributed.backend", (
            "'nccl' needs CUDA GPUs, but this plan trains on a CPU. Use distributed.backend=gloo "
            "(or auto: nccl on cuda, gloo on a CPU).")))
    return out


def _planning_gpu(cfg: AppConfig) -> bool:
    """Tells whether this is a dry run for a GPU profile (planning for another machine)."""
    return cfg.dry_run and cfg.hardware.device == "cuda"


def _deepspeed(cfg: AppConfig, env: Environment, resolved: Resolved) -> list[Problem]:
    d = cfg.distributed
    if d.strategy not in ("zero2", "zero3"):
        return []
    missing = []
    if resolved.device != "cuda":
        missing.append("this plan trains on a CPU")
    if not env.has("deepspeed") and not _planning_gpu(cfg):
        missing.append("deepspeed is not installed")
    if not missing:
        return []
    return [Problem("distributed", (
        f"'{d.name}' needs CUDA GPUs and pip install 'llmops[deepspeed]' ({'; '.join(missing)}). "
        "Use distributed=ddp (gloo on a CPU) or distributed=fsdp, or add dry_run=true with a GPU "
        "profile (e.g. hardware=8xa100_80g) to plan it for another machine."))]


def _fsdp_cpu(cfg: AppConfig, env: Environment, resolved: Resolved) -> list[Problem]:
    """FSDP on a CPU: accelerate 1.15 turns FSDP on only for GPU-type setups (its state is
    MULTI_CPU there), so it would train as plain DDP with nothing sharded."""
    if cfg.distributed.strategy != "fsdp" or resolved.device == "cuda":
        return []
    return [Problem("distributed", (
        "'fsdp' shards over GPUs only: on a CPU accelerate runs it as plain DDP (nothing "
        "sharded). Use distributed=ddp on a CPU, a CUDA hardware profile, or add dry_run=true "
        "with a GPU profile (e.g. hardware=8xa100_80g) to plan it for another machine."))]


def _devices(cfg: AppConfig, env: Environment, resolved: Resolved) -> list[Problem]:
    d, hw, n = cfg.distributed, resolved.hardware, resolved.distributed["nproc_per_node"]
    if resolved.device == "cuda":
        limit, what = int(hw["num_gpus"] or 0), f"{hw['name']} has {hw['num_gpus']} GPU(s)"
    else:
        limit = env.cpu_count
        what = f"this CPU has {env.cpu_count} cores (one gloo process per core at most)"
    if n <= limit:
        return []
    return [Problem("distributed.nproc_per_node", (
        f"{d.nproc_per_node} processes per node, but {what}. Use "
        f"distributed.nproc_per_node={max(1, limit)} or less (auto: one per GPU), or a profile "
        "with more GPUs (e.g. hardware=8xa100_80g)."))]


def _unsloth(cfg: AppConfig, env: Environment, resolved: Resolved) -> list[Problem]:
    if resolved.backend != "unsloth" or resolved.distributed["world_size"] <= 1:
        return []
    return [Problem("train.backend", (
        f"'unsloth' trains on one GPU, but distributed={cfg.distributed.name} starts "
        f"{resolved.distributed['world_size']} processes. Use train.backend=hf with "
        "distributed, or distributed=none with unsloth."))]


def _quant(cfg: AppConfig, env: Environment, resolved: Resolved) -> list[Problem]:
    d, q = cfg.distributed, cfg.quant.type
    if q == "none" or d.strategy not in SHARDED:
        return []
    if q == "int8":
        return [Problem("quant.type", (
            f"'int8' cannot be sharded by distributed={d.name}: FSDP and ZeRO-3 shard float "
            "tensors, and bitsandbytes' LLM.int8 weights have no float storage (only 4-bit "
            "weights do, through bnb_4bit_quant_storage). Use quant=nf4, or distributed=ddp / "
            "deepspeed_zero2, which keep a whole quantized replica per GPU."))]
    if resolved.compute_dtype not in QLORA_STORAGE:
        return [Problem("quant.type", (
            f"'nf4' with distributed={d.name} needs the 4-bit weights stored in the compute "
            f"dtype (bnb_4bit_quant_storage = bfloat16 or float16, bitsandbytes >= 0.43; see "
            f"PEFT's FSDP+QLoRA guide), but the compute dtype here is {resolved.compute_dtype}. "
            "Train on a bf16 GPU (train.precision=bf16 or auto) with "
            "quant.compute_dtype=auto, or use distributed=ddp."))]
    return []


def _offload(cfg: AppConfig, env: Environment, resolved: Resolved) -> list[Problem]:
    d = cfg.distributed
    if not d.cpu_offload or d.strategy in SHARDED:
        return []
    return [Problem("distributed.cpu_offload", (
        f"true is not supported with distributed={d.name} (strategy {d.strategy}): only "
        "sharded states move to the host. Use distributed=deepspeed_zero3 or fsdp with "
        "distributed.cpu_offload=true, or distributed.cpu_offload=false."))]


def _nodes(cfg: AppConfig, env: Environment, resolved: Resolved) -> list[Problem]:
    d, hw = cfg.distributed, resolved.hardware
    out = []
    if hw.get("num_nodes") and d.nnodes > hw["num_nodes"]:
        out.append(Problem("distributed.nnodes", (
            f"{d.nnodes} nodes, but the profile {hw['name']} describes {hw['num_nodes']}. "
            f"Use distributed.nnodes={hw['num_nodes']}, or a profile of that many nodes.")))
    if d.nnodes > 1 and not cfg.dry_run and not _rendezvous():
        out.append(Problem("distributed.nnodes", (
            f"{d.nnodes} nodes need a rendezvous, and none is set: run under SLURM "
            f"(hydra/launcher=slurm hydra.launcher.nodes={d.nnodes}: each SLURM task is one rank "
            "and task 0 runs the pipeline). Use distributed.nnodes=1 for one node, or add "
            "dry_run=true to plan only.")))
    return out


def _rendezvous() -> bool:
    """Tells whether this process runs where several nodes find each other: a SLURM job (the
    launch path starts one rank per SLURM task; a bare MASTER_ADDR would make every node run the
    whole pipeline)."""
    return bool(os.environ.get("SLURM_JOB_ID"))
