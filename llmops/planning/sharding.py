"""The planner's multi-device model: per-device memory under DDP, ZeRO-2/3 and FSDP, and the
communication time of a step. Pure arithmetic on the single-device parts of ``memory``.

Per device, with P trainable parameters, N processes sharing the shards and 16-bit training
(the ZeRO paper's notation, Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training
Trillion Parameter Models", sec. 3 and 5):

- ddp: a full replica (as one process) plus DDP's gradient buckets, one more copy of the
  gradients (torch DistributedDataParallel with its default gradient_as_bucket_view=False).
- zero2 (DeepSpeed): 16-bit parameters replicated; 16-bit gradients, fp32 master weights and Adam
  m, v sharded: 2P + (2 + 12)P/N.
- zero3 (DeepSpeed): everything sharded, 16P/N, plus the gathered working set (two units: the
  one computing and the one prefetched).
- fsdp full_shard (FSDP2 through accelerate 1.15, which upcasts the trainable parameters to fp32
  master weights under mixed precision): fp32 parameters, fp32 gradients and Adam sharded, 16P/N,
  plus the gathered working set; shard_grad_op keeps the 16-bit parameters gathered from forward
  to backward; hybrid_shard shards inside a node only (N = processes per node).
- Frozen weights (LoRA, QLoRA) are sharded by zero3 and fsdp, replicated by ddp and zero2.
- cpu_offload (zero3, fsdp): the sharded states live in host memory; the device keeps the working
  set, activations and the loss head.

Communication (ring collectives, bandwidth-bound, no overlap with compute: an upper bound):
an all-reduce moves 2(N-1)/N x bytes through each device's link, an all-gather or a
reduce-scatter (N-1)/N x bytes. DDP and ZeRO-2 all-reduce the gradients once per optimizer step
(no_sync while accumulating); ZeRO-3 and FSDP all-gather the parameters in forward and again in
backward and reduce-scatter the gradients on every micro-step (1.5x DDP's volume, ZeRO paper sec.
7).
"""

from __future__ import annotations

from typing import Any

GIB = 2**30
PCIE_GBPS = 256.0  # PCIe 4.0 x16, one way: 32 GB/s; used when the profile gives no interconnect
NETWORK_GBPS = 200.0  # between nodes: one 200 Gb/s HDR InfiniBand link per node, assumed
CPU_GLOO_GBPS = 40.0  # gloo over loopback on one host, assumed
SHARDED = ("zero3", "fsdp")
# The parts of a step on one device, in the order reports list them.
PART_ORDER = ("weights", "lora", "gradients", "optimizer", "buckets", "gathered", "activations",
              "logits", "overhead")


def _ordered(parts: dict[str, float]) -> dict[str, float]:
    return {k: parts[k] for k in PART_ORDER if k in parts}


def shard_size(d: dict[str, Any]) -> int:
    """Returns how many processes share one copy of the sharded states."""
    if d["strategy"] == "fsdp" and d["sharding_strategy"] == "hybrid_shard":
        return int(d["nproc_per_node"])
    return int(d["world_size"])


def shard_parts(parts: dict[str, float], facts: dict[str, Any], d: dict[str, Any],
                notes: list[str]) -> tuple[dict[str, float], float]:
    """Returns the per-device parts under a distributed strategy, and the host bytes per process.

    Args:
        parts: The single-device parts of ``memory.memory_parts`` (bytes).
        facts: What the parts were built from: trainable (count), a16 (bytes of a 16-bit or,
            on a CPU, fp32 value), full (a full fine-tune), unit (parameters of the largest
            unit FSDP/ZeRO-3 gathers at once) and unit_b (its stored bytes per parameter).
        d: The resolved distributed group.
        notes: Assumptions, appended to.
    """
    s, n = d["strategy"], shard_size(d)
    p, a16, full = facts["trainable"], facts["a16"], facts["full"]
    frozen = 0.0 if full else parts["weights"]
    out = dict(parts)
    host = 0.0
    if s == "ddp":
        out["buckets"] = parts["gradients"]
        notes.append(f"ddp x {n}: a full replica per process + DDP's gradient buckets "
                     "(one more gradient copy)")
        return _ordered(out), host
    master = 4.0 if a16 < 4 else 0.0
    if s == "zero2":
        out.update(weights=parts["weights"] if full else frozen,
                   lora=0.0 if full else p * a16, gradients=p * a16 / n,
                   optimizer=p * (master + 8.0) / n)
        notes.append(f"zero2 x {n}: 16-bit params replicated; 16-bit grads, fp32 master and Adam "
                     f"sharded: 2P + 14P/N (ZeRO paper, P_os+g)")
        return _ordered(out), host
    if s == "zero3":
        train_b, grad_b, opt_b = a16, a16, master + 8.0
        what = ("16-bit params and grads, fp32 master and Adam all sharded: 16P/N "
                "(ZeRO paper, P_os+g+p)")
    else:
        train_b, grad_b, opt_b = 4.0, 4.0, 8.0
        what = ("trainable params upcast to fp32 by accelerate's FSDP2, fp32 grads and Adam, all "
                "sharded: 16P/N")
    sharded = {"weights": (p * train_b if full else frozen) / n,
               "lora": 0.0 if full else p * train_b / n,
               "gradients": p * grad_b / n, "optimizer": p * opt_b / n}
    unit = facts["unit"] * facts["unit_b"]
    if s == "fsdp" and d["sharding_strategy"] == "shard_grad_op":
        gathered = frozen + p * a16
        notes.append("fsdp shard_grad_op: 16-bit params stay gathered from forward to backward")
    else:
        gathered = 2 * unit + (facts["unit"] * grad_b if full else 0.0)
        notes.append(f"gathered working set: 2 units of {facts['unit'] / 1e6:.0f}M params (one "
                     "computing, one prefetched)" + (" + one unit's unsharded grads" if full
                                                     else ""))
    notes.append(f"{s} x {n}: {what}")
    if d["cpu_offload"]:
        host = sum(sharded.values())
        sharded = dict.fromkeys(sharded, 0.0)
        notes.append("cpu_offload: sharded params, grads and optimizer states in host memory")
    out.update(sharded, gathered=gathered)
    return _ordered(out), host


def link_gbps(hardware: dict[str, Any], d: dict[str, Any], notes: list[str]) -> float:
    """Returns the bandwidth (Gbit/s, one way) of the slowest link a collective crosses."""
    if hardware.get("device") != "cuda":
        notes.append(f"gloo on one CPU host: {CPU_GLOO_GBPS:g} Gbit/s assumed")
        return CPU_GLOO_GBPS
    gbps = hardware.get("interconnect_gbps")
    if not gbps:
        gbps = PCIE_GBPS
        notes.append(f"interconnect unknown: PCIe 4.0 x16 assumed ({PCIE_GBPS:g} Gbit/s)")
    if int(d["nnodes"]) > 1 and d["sharding_strategy"] != "hybrid_shard":
        notes.append(f"{d['nnodes']} nodes: rings cross the network, {NETWORK_GBPS:g} Gbit/s "
                     "per node assumed")
        gbps = min(float(gbps), NETWORK_GBPS)
    return float(gbps)


def comm_seconds(facts: dict[str, Any], parts: dict[str, float], d: dict[str, Any],
                 grad_accum: int, hardware: dict[str, Any], notes: list[str]) -> float:
    """Returns the seconds per optimizer step spent in collectives (bandwidth-bound, no overlap).

    Args:
        facts: As for ``shard_parts``, plus param_bytes (all params, 16-bit as computed).
        parts: The single-device parts (bytes).
        d: The resolved distributed group.
        grad_accum: Micro-steps per optimizer step.
        hardware: The resolved hardware profile (device, interconnect_gbps).
        notes: Assumptions, appended to.
    """
    n, s = int(d["world_size"]), d["strategy"]
    if n <= 1:
        return 0.0
    bps = link_gbps(hardware, d, notes) * 1e9 / 8
    ring = (n - 1) / n
    p = facts["trainable"]
    if s in ("ddp", "zero2"):
        grad = parts["gradients"] if s == "ddp" else p * facts["a16"]
        volume = 2 * ring * grad
        notes.append(f"comm: all-reduce of {grad / GIB:.2f} GB of grads per step, "
                     "2(N-1)/N x bytes / bandwidth")
    else:
        grad = p * (facts["a16"] if s == "zero3" else 4.0)
        gathers = 1 if d["sharding_strategy"] == "shard_grad_op" and s == "fsdp" else 2
        volume = grad_accum * ring * (gathers * facts["param_bytes"] + grad)
        notes.append(f"comm: {gathers} all-gather(s) of {facts['param_bytes'] / GIB:.2f} GB of "
                     f"params + reduce-scatter of {grad / GIB:.2f} GB of grads per micro-step, "
                     "(N-1)/N x bytes / bandwidth each")
    seconds = volume / bps
    if d["strategy"] == "fsdp" and d["sharding_strategy"] == "hybrid_shard" and d["nnodes"] > 1:
        seconds += 2 * (d["nnodes"] - 1) / d["nnodes"] * grad / d["nproc_per_node"] \
            / (NETWORK_GBPS * 1e9 / 8)
    if d["cpu_offload"] and s in SHARDED:
        seconds += 2 * p * facts["a16"] / int(shard_size(d)) / (PCIE_GBPS * 1e9 / 8)
        notes.append("cpu_offload: grads to host and params back over PCIe 4.0 every step")
    return seconds
