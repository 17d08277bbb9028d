"""Compares the compute planner's per-device memory under sharding with published figures.

For a few model presets (full fine-tune, bf16, AdamW), each strategy and world size, prints the
planner's model states per device (weights + gradients + optimizer, from
``llmops.planning.memory.estimate``) next to the ZeRO paper's formulas, and their ratio:

    Rajbhandari, Rasley, Ruwase, He. "ZeRO: Memory Optimizations Toward Training Trillion
    Parameter Models", SC 2020 (arXiv:1910.02054), sec. 3.1 and 5, Fig. 1. Mixed-precision Adam
    holds K = 12 bytes of optimizer state per parameter (fp32 master, m, v) besides 2 + 2 bytes
    of fp16 parameters and gradients: DDP 16 Psi, ZeRO-1 4 Psi + 12 Psi/N,
    ZeRO-2 2 Psi + 14 Psi/N, ZeRO-3 16 Psi/N.

The planner's DDP figure follows the hf backend, which loads a full fine-tune in bf16 and keeps
no fp32 master copy (8 Psi + DDP's gradient buckets, 2 Psi), so its ratio to the paper's 16 Psi
is 10/16 by design. FSDP (accelerate's FSDP2 upcasts the trainable parameters to fp32) is
compared with ZeRO-3's formula. ZeRO-1 has no llmops strategy; its formula is shown for
reference.

Then accelerate's own estimator (``accelerate estimate-memory``) where it can run: the command
needs the Hugging Face Hub for the model's config, which this machine cannot reach, so the same
functions it calls (``calculate_maximum_sizes`` on an empty model from the preset's architecture,
``estimate_training_usage``) run here on a config built from the preset, offline. Its figure is
one device's peak for batch size 1 (no sharding), the largest of its model / gradients /
optimizer / step entries.

    python benchmarks/shard_memory.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmops.planning.memory import GIB, estimate, param_groups  # noqa: E402

MODELS = ("qwen1.5b", "llama8b", "qwen7b")
WORLD = (2, 4, 8)
TRAIN = {"batch_size": 1, "grad_accum": 1, "max_length": 512, "precision": "bf16",
         "optimizer": "adamw_torch", "backend": "hf", "gradient_checkpointing": False}
GPU = {"name": "8xa100_80g", "device": "cuda", "gpu_name": "NVIDIA A100 80GB",
       "gpu_memory_gb": 80, "num_gpus": 8, "bf16": True, "tflops": 312,
       "interconnect_gbps": 2400}
PAPER = {
    "ddp": lambda n: 16.0, "zero1": lambda n: 4 + 12 / n, "zero2": lambda n: 2 + 14 / n,
    "zero3": lambda n: 16 / n, "fsdp": lambda n: 16 / n,
}
STATES = ("weights", "lora", "gradients", "optimizer", "buckets")


def preset(name: str) -> dict:
    """Returns a model preset's architecture facts from conf/model."""
    import llmops.conf

    return llmops.conf.load("model", name)


def dist(strategy: str, n: int) -> dict:
    """Returns a resolved distributed group of one node."""
    return {"name": strategy, "strategy": strategy, "launcher": "accelerate", "nproc_per_node": n,
            "nnodes": 1, "world_size": n, "cpu_offload": False, "activation_checkpointing": False,
            "sharding_strategy": "full_shard", "backend": "nccl", "fsdp_version": 2}


def accelerate_peak_gb(model: dict) -> float | None:
    """Returns accelerate's estimate-memory training peak (bf16, batch 1) for a preset, offline."""
    try:
        from accelerate import init_empty_weights
        from accelerate.commands.estimate import estimate_training_usage
        from accelerate.utils import calculate_maximum_sizes
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError:
        return None
    cfg = AutoConfig.for_model(
        model["family"], hidden_size=model["hidden_size"],
        intermediate_size=model["intermediate_size"], num_hidden_layers=model["num_layers"],
        num_attention_heads=model["num_attention_heads"],
        num_key_value_heads=model["num_kv_heads"], vocab_size=model["vocab_size"],
        tie_word_embeddings=model.get("tie_embeddings", False))
    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(cfg)
    total, _ = calculate_maximum_sizes(empty)  # bytes in fp32
    return max(estimate_training_usage(total, "bfloat16").values()) / GIB


def main() -> None:
    """Prints the tables and ratios."""
    print(__doc__.split("\n\n")[1])
    header = (f"{'model':<10} {'strategy':<6} {'N':>2} {'planner GB':>10} {'paper GB':>9} "
              f"{'ratio':>6} {'total/dev GB':>12} {'comm s':>7}")
    for name in MODELS:
        m = preset(name)
        psi = param_groups(m)["total"]
        print(f"\n{name}: Psi = {psi / 1e9:.2f}B parameters (full fine-tune, bf16, AdamW, "
              "batch 1 x 512 tokens)")
        print(header)
        for strategy in ("ddp", "zero2", "zero3", "fsdp"):
            for n in WORLD:
                est = estimate(m, None, {"type": "none"}, TRAIN, GPU, distributed=dist(strategy, n))
                states = sum(est["parts_gb"].get(k, 0.0) for k in STATES)
                paper = PAPER[strategy](n) * psi / GIB
                print(f"{name:<10} {strategy:<6} {n:>2} {states:>10.1f} {paper:>9.1f} "
                      f"{states / paper:>6.2f} {est['total_gb']:>12.1f} "
                      f"{est['comm_time_s']:>7.3f}")
        for n in WORLD:
            print(f"{name:<10} {'zero1':<6} {n:>2} {'-':>10} {PAPER['zero1'](n) * psi / GIB:>9.1f}"
                  f" {'-':>6}   (no llmops strategy; formula for reference)")
        acc = accelerate_peak_gb(m)
        one = estimate(m, None, {"type": "none"}, TRAIN, GPU)
        states = sum(one["parts_gb"].get(k, 0.0) for k in STATES)
        if acc is None:
            print("accelerate's estimator: not importable here")
        else:
            print(f"accelerate estimate_training_usage (bf16, one device, peak of its parts): "
                  f"{acc:.1f} GB; planner, one process: states {states:.1f} GB "
                  f"(ratio {states / acc:.2f}), total {one['total_gb']:.1f} GB")
    print("\nSources: ZeRO paper (arXiv:1910.02054) sec. 3.1, 5; accelerate 1.15 "
          "accelerate/commands/estimate.py (estimate_training_usage); `accelerate "
          "estimate-memory MODEL` itself needs the Hub (offline here: not run).")


if __name__ == "__main__":
    main()
