"""The compute planner's memory, time and cost model: pure arithmetic on the config's facts.

Models what the llmops training backends actually hold on the device during a step (see
``llmops/backends/hf.py``): transformers loads the base (bf16 on a bf16 GPU, else fp32),
bitsandbytes quantizes the linear layers, peft's ``prepare_model_for_kbit_training`` upcasts the
non-quantized parameters (embeddings, lm_head, norms) to fp32, peft keeps LoRA weights in fp32, and
TRL >= 1.16 scores the LM head in tiles (``fused_lm_head``) instead of materialising
batch x seq x vocab logits. Every such choice is listed in the estimate's ``assumptions``.

Units: GB here means GiB (2**30 bytes), as nvidia-smi and torch report memory.
"""

from __future__ import annotations

import math
from typing import Any

from llmops.planning import sharding

GIB = 2**30
CUDA_OVERHEAD_GB = 0.8  # CUDA context + cuBLAS workspace: outside torch.cuda.max_memory_allocated
# Python + torch + transformers + peft + trl resident set on a CPU: 0.54 GB measured here (VmRSS
# after importing llmops.stages.sft, which imports them); the tiny chain's stage process held
# 0.57 GB at sft's start (benchmarks/stage_memory.py). 0.7 before (a process that had also run
# the earlier stages' work), which put the tiny model's sft at 0.78 of its estimate.
CPU_OVERHEAD_GB = 0.55
USABLE_FRACTION = 0.92  # allocator fragmentation and reserve: plan to at most 92% of the device
FUSED_TOKEN_CHUNK = 4096  # trl.kernels.chunked_logprob.TOKEN_CHUNK_SIZE
FUSED_VOCAB_CHUNK = 32768  # trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE
MFU = {"none": 0.35, "int8": 0.20, "nf4": 0.25}  # dequantisation slows k-bit matmuls
CPU_TFLOPS = 0.5
GPU_TFLOPS = {"h200": 989, "h100": 989, "a100": 312, "l40": 181, "l4": 121, "a10": 70,
              "4090": 165, "3090": 71, "v100": 125, "t4": 65}
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Calibrated on CPU against measured peak RSS (benchmarks/compute_calibration.py).
ACT_SCALE = 1.0
# Tile-sized temporaries of the LM-head loss: torch ops on CPU, one Triton kernel on CUDA. On a
# CPU, TRL's chunked log-prob over one 4096 x 32768 fp32 tile peaks at 8.8 tiles in its backward
# (4.41 GB for a 0.5 GB tile, Qwen2's 151,936 vocabulary, measured here; the qwen2 sft stage of
# benchmarks/stage_memory.py peaked at 5.33 GB).
TILE_TEMPS = {"cpu": 8.6, "cuda": 1.0}


def linear_shapes(model: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """Returns (in_features, out_features) of each linear layer of one decoder block."""
    h, i = model["hidden_size"], model["intermediate_size"]
    head_dim = h // model["num_attention_heads"]
    q, kv = model["num_attention_heads"] * head_dim, model["num_kv_heads"] * head_dim
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def param_groups(model: dict[str, Any]) -> dict[str, int]:
    """Splits the parameter count into linear layers, embeddings, lm_head and the rest (norms)."""
    shapes = linear_shapes(model)
    linear = model["num_layers"] * sum(a * b for a, b in shapes.values())
    embed = model["vocab_size"] * model["hidden_size"]
    head = 0 if model.get("tie_embeddings") else embed
    other = max(0, int(model["params"]) - linear - embed - head)
    total = max(int(model["params"]), linear + embed + head)  # a preset's count may be rounded
    return {"linear": linear, "embed": embed, "head": head, "other": other, "total": total}


def lora_targets(lora: dict[str, Any] | None) -> list[str]:
    """Returns the decoder linear layers a LoRA adapter wraps ('all-linear': all seven)."""
    if not lora:
        return []
    target = lora["target_modules"]
    if isinstance(target, str):
        return list(LINEARS) if target == "all-linear" else [t for t in LINEARS if t == target]
    return [t for t in LINEARS if t in set(target)]


def lora_params(model: dict[str, Any], lora: dict[str, Any] | None) -> int:
    """Counts LoRA parameters: r * (in + out) per wrapped linear, per layer."""
    if not lora:
        return 0
    shapes, r = linear_shapes(model), int(lora["r"])
    return model["num_layers"] * sum(r * sum(shapes[t]) for t in lora_targets(lora))


def resolve_precision(train: dict[str, Any], hardware: dict[str, Any]) -> str:
    """Returns train["precision"]; "auto" (a caller outside the compiler) resolves by the one rule
    in ``llmops.planning.precision``."""
    from llmops.planning.precision import precision_for

    return precision_for(train.get("precision", "auto"), hardware)


def _tflops(hardware: dict[str, Any]) -> tuple[float, str | None]:
    if hardware.get("tflops"):
        return float(hardware["tflops"]), None
    if hardware.get("device") != "cuda":
        return CPU_TFLOPS, f"CPU throughput assumed {CPU_TFLOPS} TFLOPS (hardware.tflops unset)"
    name = (hardware.get("gpu_name") or "").lower()
    for key, tf in GPU_TFLOPS.items():
        if key in name:
            return float(tf), f"{hardware.get('gpu_name')} assumed {tf} dense 16-bit TFLOPS"
    return 100.0, "GPU throughput unknown; assumed 100 TFLOPS (set hardware.tflops)"


def memory_parts(model: dict, lora: dict | None, quant: dict, train: dict, hardware: dict,
                 distributed: dict | None = None) -> tuple[dict[str, float], list[str]]:
    """Returns the bytes each part of a training step holds at its peak on one device, and the
    assumptions.

    Args:
        model, lora, quant, train, hardware: As for ``estimate``.
        distributed: The resolved distributed group, or None for one process.
    """
    parts, notes, _, _ = device_parts(model, lora, quant, train, hardware, distributed)
    return parts, notes


def device_parts(model: dict, lora: dict | None, quant: dict, train: dict, hardware: dict,
                 distributed: dict | None = None
                 ) -> tuple[dict[str, float], list[str], dict[str, Any], float]:
    """Returns (parts per device, assumptions, the facts sharding needs, host bytes per process).

    One process: the parts of ``single_parts``. A distributed group reshapes them
    (``llmops.planning.sharding``); activation_checkpointing counts as gradient checkpointing.
    """
    if distributed and distributed["activation_checkpointing"]:
        train = {**train, "gradient_checkpointing": True}
    parts, notes, facts = single_parts(model, lora, quant, train, hardware)
    if not distributed or distributed["strategy"] == "none":
        return parts, notes, facts, 0.0
    sharded, host = sharding.shard_parts(parts, facts, distributed, notes)
    return sharded, notes, facts, host


def single_parts(model: dict, lora: dict | None, quant: dict, train: dict, hardware: dict
                 ) -> tuple[dict[str, float], list[str], dict[str, Any]]:
    """Returns the bytes each part of a one-process training step holds at its peak, the
    assumptions, and the facts the multi-device model needs (``sharding.shard_parts``)."""
    notes: list[str] = []
    cuda = hardware.get("device") == "cuda"
    precision = resolve_precision(train, hardware)
    backend = train.get("backend", "auto")
    unsloth = backend == "unsloth"
    qtype = (quant or {}).get("type", "none")
    g = param_groups(model)
    h, i, L, V = (model["hidden_size"], model["intermediate_size"], model["num_layers"],
                  model["vocab_size"])
    shapes = linear_shapes(model)
    kv = shapes["k_proj"][1]

    # Weights. On a GPU hf loads bf16 for precision=bf16, and fp16 for fp16 under LoRA (a full
    # fine-tune in fp16 AMP keeps fp32 master weights); on a CPU fp32.
    base_b = 2 if cuda and (precision == "bf16" or (precision == "fp16" and (unsloth or lora)))\
        else 4
    rest = g["embed"] + g["head"] + g["other"]
    if qtype == "none":
        weights = g["total"] * base_b
        notes.append(f"base weights in {'16-bit' if base_b == 2 else 'fp32'} "
                     f"({'precision=' + precision})")
        nonq_b = base_b
    else:
        nonq_b = 2 if unsloth else 4
        if qtype == "nf4":
            absmax = 1 / 64 + 4 / (64 * 256) if quant.get("double_quant") else 4 / 64
            per = 0.5 + absmax
            scales = ("double-quantized (8-bit + fp32 per 256)" if quant.get("double_quant")
                      else "fp32")
            notes.append(f"nf4: 4 bits + block-64 absmax {scales} = {per * 8:.3f} bits/param "
                         "on linear layers (QLoRA sec. 3)")
        else:
            per = 1.0 + 4 * sum(o for _, o in shapes.values()) / max(1, g["linear"] // L)
            notes.append("int8: 1 byte/param + fp32 row scales on linear layers")
        weights = g["linear"] * per + rest * nonq_b
        notes.append("embeddings, lm_head and norms stay unquantized, "
                     + ("in 16-bit (unsloth)" if unsloth else
                        "upcast to fp32 by peft's prepare_model_for_kbit_training (hf backend)"))

    # What trains, its gradients and optimizer states.
    n_lora = lora_params(model, lora)
    if lora:
        trainable, train_b = n_lora, 4
        notes.append(f"LoRA r{lora.get('r')} on {', '.join(lora_targets(lora)) or 'no known layer'}"
                     f": {n_lora / 1e6:.1f}M params kept in fp32 (peft autocast_adapter_dtype)")
    else:
        trainable, train_b = g["total"], base_b
        notes.append("full fine-tune: every weight trains; no separate fp32 master copy (HF "
                     "Trainer keeps weights, grads and Adam states in the load dtype)")
    opt = train.get("optimizer", "adamw_torch")
    if "8bit" in opt:
        opt_b = 2.0
        notes.append(f"{opt}: two 8-bit states = 2 bytes/trainable param")
    elif opt == "sgd":
        opt_b = 0.0
        notes.append("sgd without momentum: no optimizer state")
    else:
        opt_b = 2.0 * train_b
        notes.append(f"{opt}: m and v in the param dtype = {opt_b:g} bytes/trainable param")

    # Activations of one micro-batch at its longest (padded to train.max_length).
    b, s = int(train.get("batch_size", 1)), int(train.get("max_length", 512))
    tokens = b * s
    a = 2 if cuda and precision in ("bf16", "fp16") else 4
    r_b = nonq_b
    norm = 2 * h * (8 if r_b == 4 else 10)
    per_layer = a * (5 * h + 4 * kv + 4 * i) + norm
    targets = lora_targets(lora)
    if lora:
        per_layer += a * int(lora["r"]) * len(targets)
        if float(lora.get("dropout", 0.0)) > 0:
            per_layer += (a + 1) * sum(shapes[t][0] for t in targets)
            notes.append("LoRA dropout > 0 keeps a dropped copy of each wrapped layer's input")
    per_layer *= ACT_SCALE
    edges = tokens * h * (r_b + 8)
    if train.get("gradient_checkpointing"):
        acts = tokens * (L * h * r_b + per_layer + 2 * h * 4) + edges
        notes.append("gradient checkpointing: one hidden state per layer + one layer recomputed")
    else:
        acts = tokens * L * per_layer + edges
    notes.append(f"activations for batch {b} x {s} tokens (padded to train.max_length), "
                 f"SDPA/flash attention (no seq^2 scores)")

    # LM head + loss: TRL scores the head in tiles, so no batch x seq x vocab logits.
    if train.get("fused_loss", True):
        tile = min(tokens, FUSED_TOKEN_CHUNK) * min(V, FUSED_VOCAB_CHUNK) * a
        logits = tile * TILE_TEMPS["cuda" if cuda else "cpu"] + tokens * h * 4 + tokens * 40
        if not lora:
            logits += V * h * 4  # fp32 grad_weight accumulator of the head
        notes.append("loss via TRL's fused LM head: vocab tiles of 4096 x 32768, no full logits")
    else:
        logits = tokens * V * (a + 8)
        notes.append("full logits: batch x seq x vocab in the compute dtype + fp32 copy and grad")
    if qtype != "none":
        acts += max(x * y for x, y in shapes.values()) * a * 2  # dequantised weight tiles

    overhead = (CUDA_OVERHEAD_GB if cuda else CPU_OVERHEAD_GB) * GIB
    parts = {
        "weights": weights, "lora": n_lora * 4 if lora else 0,
        "gradients": trainable * train_b, "optimizer": trainable * opt_b,
        "activations": acts, "logits": logits, "overhead": overhead,
    }
    layer = g["linear"] // L + 2 * h
    full = not lora
    facts = {
        "trainable": trainable, "a16": float(a), "full": full,
        "unit": max(layer, g["embed"]),
        "unit_b": float(a) if full else weights / max(1, g["total"]),
        "param_bytes": g["total"] * a if full else weights + n_lora * a,
    }
    return parts, notes, facts


def estimate(model: dict, lora: dict | None, quant: dict, train: dict, hardware: dict,
             n_train_rows: int | None = None, avg_tokens: int | None = None,
             distributed: dict | None = None) -> dict[str, Any]:
    """Estimates peak training memory by part, whether it fits, step/run time and cost.

    Args:
        model: The model config (architecture facts: params, num_layers, hidden_size, ...).
        lora: The LoRA params (r, dropout, target_modules), or None for full fine-tuning.
        quant: The quant params (type none/nf4/int8, double_quant).
        train: The train params (batch_size, grad_accum, max_length, gradient_checkpointing,
            optimizer, precision, backend, epochs, max_steps).
        hardware: The resolved hardware profile (device, gpu_memory_gb or memory_gb, tflops,
            hourly_usd).
        n_train_rows: Training rows, for run time; None when unknown.
        avg_tokens: Mean tokens per row, for run time; None assumes half of train.max_length.
        distributed: The resolved distributed group (``llmops.planning.distributed``), or None
            for one process.

    Returns:
        {parts_gb, total_gb, capacity_gb, usable_gb, fits, headroom_gb, batch_advice,
         trainable_params, step_time_s, run_time_h, cost_usd, assumptions, world_size,
         strategy, all_devices_gb, host_gb, compute_time_s, comm_time_s}: memory figures are
         per device; all_devices_gb sums them over the world, host_gb is the host memory
         cpu_offload takes per node.
    """
    parts, notes, facts, host = device_parts(model, lora, quant, train, hardware, distributed)
    total = sum(parts.values()) / GIB
    world = int(distributed["world_size"]) if distributed else 1
    cuda = hardware.get("device") == "cuda"
    capacity = hardware.get("gpu_memory_gb") if cuda else hardware.get("memory_gb")
    capacity = float(capacity) if capacity else None
    procs = int(distributed["nproc_per_node"]) if distributed else 1
    if capacity and not cuda and procs > 1:
        capacity /= procs
        notes.append(f"system memory shared by {procs} processes: {capacity:.1f} GB each")
    usable = capacity * USABLE_FRACTION if capacity else None
    if usable is not None:
        notes.append(f"fits means total <= {USABLE_FRACTION:.0%} of {capacity:g} GB "
                     f"({'GPU' if cuda else 'system memory'}); GB = GiB")
    out: dict[str, Any] = {
        "parts_gb": {k: round(v / GIB, 2) for k, v in parts.items()},
        "total_gb": round(total, 2),
        "capacity_gb": capacity,
        "usable_gb": round(usable, 2) if usable else None,
        "fits": True if usable is None else total <= usable,
        "headroom_gb": round(usable - total, 2) if usable else None,
        "trainable_params": lora_params(model, lora) if lora else param_groups(model)["total"],
        "world_size": world,
        "strategy": distributed["strategy"] if distributed else "none",
        "all_devices_gb": round(total * world, 2),
        "host_gb": round(host * (distributed["nproc_per_node"] if distributed else 1) / GIB, 2),
    }
    out["batch_advice"] = batch_advice(model, lora, quant, train, hardware, usable, distributed)
    comm = 0.0
    if distributed:
        comm = sharding.comm_seconds(facts, single_parts(model, lora, quant, train, hardware)[0],
                                     distributed, int(train.get("grad_accum", 1)), hardware, notes)
    out.update(_time_and_cost(model, lora, quant, train, hardware, n_train_rows, avg_tokens, notes,
                              world, comm))
    out["assumptions"] = notes
    return out


def total_gb(model: dict, lora: dict | None, quant: dict, train: dict, hardware: dict,
             distributed: dict | None = None) -> float:
    """Returns the estimated peak memory of one device in GB (the sum of its parts)."""
    return sum(memory_parts(model, lora, quant, train, hardware, distributed)[0].values()) / GIB


def batch_advice(model: dict, lora: dict | None, quant: dict, train: dict, hardware: dict,
                 usable: float | None, distributed: dict | None = None) -> dict[str, Any]:
    """Finds the largest per-device batch that fits, and the accumulation that keeps the effective
    batch."""
    b, ga = int(train.get("batch_size", 1)), int(train.get("grad_accum", 1))
    eff = b * ga
    if usable is None:
        return {"max_batch_size": None, "batch_size": b, "grad_accum": ga, "effective_batch": eff}
    best = 0
    for cand in (1, 2, 4, 8, 16, 32, 64, 128, 256):
        if total_gb(model, lora, quant, {**train, "batch_size": cand}, hardware,
                    distributed) > usable:
            break
        best = cand
    if best == 0:
        return {"max_batch_size": 0, "batch_size": None, "grad_accum": None,
                "effective_batch": eff, "note": "even batch_size=1 does not fit"}
    pick = max(d for d in range(1, min(best, eff) + 1) if eff % d == 0)
    return {"max_batch_size": best, "batch_size": pick, "grad_accum": eff // pick,
            "effective_batch": eff}


def _time_and_cost(model: dict, lora: dict | None, quant: dict, train: dict, hardware: dict,
                   n_rows: int | None, avg_tokens: int | None, notes: list[str], world: int = 1,
                   comm_s: float = 0.0) -> dict[str, Any]:
    """Returns the step's compute and communication time, the steps, run time and cost.

    Each of the world's devices computes its own batch in the same time; a step consumes
    world x batch x grad_accum rows.
    """
    s = int(train.get("max_length", 512))
    if avg_tokens is None:
        avg_tokens = max(1, s // 2)
        notes.append(f"mean row length unknown: assumed {avg_tokens} tokens (max_length / 2)")
    avg_tokens = min(avg_tokens, s)
    h, L = model["hidden_size"], model["num_layers"]
    n = int(model["params"]) - (0 if model.get("tie_embeddings") else model["vocab_size"] * h)
    attn = 6 * L * h * avg_tokens  # QK^T and AV, causal, forward + backward
    if lora:
        flops = 4 * n + 6 * lora_params(model, lora) + attn
        notes.append("FLOPs/token: 4N through frozen weights + 6N_lora (LoRA); 6N for full FT")
    else:
        flops = 6 * n + attn
    if train.get("gradient_checkpointing"):
        flops += 2 * n + attn / 3
    tflops, note = _tflops(hardware)
    if note:
        notes.append(note)
    mfu = MFU.get((quant or {}).get("type", "none"), 0.35)
    notes.append(f"throughput: {tflops:g} TFLOPS x MFU {mfu}")
    tokens_step = int(train.get("batch_size", 1)) * int(train.get("grad_accum", 1)) * avg_tokens
    compute_s = tokens_step * flops / (tflops * 1e12 * mfu)
    step_s = compute_s + comm_s
    steps = None
    if int(train.get("max_steps", -1)) > 0:
        steps = int(train["max_steps"])
    elif n_rows:
        eff = int(train.get("batch_size", 1)) * int(train.get("grad_accum", 1)) * world
        steps = math.ceil(n_rows * float(train.get("epochs", 1)) / eff)
    run_h = steps * step_s / 3600 if steps else None
    price = hardware.get("hourly_usd")
    return {
        "flops_per_token": flops,
        "tokens_per_step": tokens_step * world,
        "steps": steps,
        "step_time_s": round(step_s, 3),
        "compute_time_s": round(compute_s, 3),
        "comm_time_s": round(comm_s, 3),
        "run_time_h": round(run_h, 3) if run_h is not None else None,
        "cost_usd": round(run_h * price, 2) if run_h is not None and price is not None else None,
    }
