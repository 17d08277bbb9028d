"""Writes the accelerate config file that `accelerate launch` starts the ranks with.

Shaped like TRL's reference configs (trl/accelerate_configs/{multi_gpu,fsdp2,zero2,zero3}.yaml),
filled from the compiled `distributed` params: one file per launch, next to its spec.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmops.errors import StageError

_FSDP_SHARDING = {"full_shard": True, "shard_grad_op": False, "hybrid_shard": True}


def accelerate_config(dist: dict[str, Any], world: int, device: str) -> dict[str, Any]:
    """Returns the accelerate config for the strategy (ddp, fsdp, zero2, zero3) on `world` ranks.

    Raises:
        StageError: For a strategy accelerate cannot run here.
    """
    strategy = str(dist["strategy"])
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE", "debug": False, "downcast_bf16": "no",
        "machine_rank": 0, "num_machines": int(dist["nnodes"]), "num_processes": world,
        "rdzv_backend": "static", "same_network": True, "main_training_function": "main",
        "mixed_precision": "no", "use_cpu": device == "cpu",
    }
    if strategy == "ddp":
        config["distributed_type"] = "MULTI_CPU" if device == "cpu" else "MULTI_GPU"
    elif strategy == "fsdp":
        sharding = str(dist["sharding_strategy"])
        config["distributed_type"] = "FSDP"
        config["fsdp_config"] = {
            "fsdp_version": int(dist["fsdp_version"] or 2),
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_reshard_after_forward": _FSDP_SHARDING.get(sharding, True),
            "fsdp_offload_params": bool(dist["cpu_offload"]),
            "fsdp_activation_checkpointing": bool(dist["activation_checkpointing"]),
            "fsdp_cpu_ram_efficient_loading": True,
            "fsdp_state_dict_type": "FULL_STATE_DICT",
        }
    elif strategy in ("zero2", "zero3"):
        offload = "cpu" if dist["cpu_offload"] else "none"
        config["distributed_type"] = "DEEPSPEED"
        config["deepspeed_config"] = {
            "deepspeed_multinode_launcher": "standard", "zero_stage": int(strategy[-1]),
            "offload_optimizer_device": offload,
            "offload_param_device": offload if strategy == "zero3" else "none",
            "zero3_init_flag": strategy == "zero3",
        }
    else:
        raise StageError(f"distributed.strategy {strategy!r} is not one accelerate launches "
                         "(ddp, fsdp, zero2, zero3). Use distributed=ddp.")
    return config


def write_accelerate_config(path: Path, dist: dict[str, Any], world: int, device: str) -> Path:
    """Writes accelerate_config(...) as YAML to path; returns path."""
    import yaml

    path.write_text(yaml.safe_dump(accelerate_config(dist, world, device), sort_keys=False),
                    encoding="utf-8")
    return path
