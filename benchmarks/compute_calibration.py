"""Calibrates the compute planner: estimated vs measured peak memory of a few training steps.

Builds real architectures (Qwen2 / Llama at the presets' real sizes) with random weights, so nothing
is downloaded, and runs LoRA or full fine-tuning steps the way the hf backend does: TRL's fused LM
head for the loss, peft LoRA on all linear layers, torch AdamW. Each configuration runs in a fresh
subprocess so its peak is its own.

- GPU: peak = torch.cuda.max_memory_allocated (compared with the estimate minus CUDA overhead).
- CPU: peak = VmHWM of the subprocess during the steps (reset after the model is built, so the
  construction spike is excluded), compared with the whole estimate (which includes the ~0.7 GB
  Python/torch baseline); the model's own share = peak minus the RSS after imports.

    python benchmarks/compute_calibration.py            # default set (~4 min, 2 idle cores)
    python benchmarks/compute_calibration.py --quick    # one small configuration
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30

CPU_CASES = [
    {"model": "qwen0.5b", "lora": 16, "batch": 2, "seq": 256, "ckpt": False},
    {"model": "qwen0.5b", "lora": 16, "batch": 2, "seq": 256, "ckpt": True},
    {"model": "qwen0.5b", "lora": None, "batch": 1, "seq": 128, "ckpt": False},
    {"model": "llama1b", "lora": 16, "batch": 1, "seq": 256, "ckpt": False},
]
GPU_CASES = [
    {"model": "qwen0.5b", "lora": 16, "batch": 8, "seq": 512, "ckpt": False},
    {"model": "qwen1.5b", "lora": 16, "batch": 4, "seq": 1024, "ckpt": False},
    {"model": "qwen1.5b", "lora": 16, "batch": 4, "seq": 1024, "ckpt": True},
    {"model": "llama3b", "lora": 16, "batch": 2, "seq": 1024, "ckpt": False},
    {"model": "llama8b", "lora": 16, "batch": 1, "seq": 2048, "ckpt": True},
    {"model": "qwen1.5b", "lora": None, "batch": 2, "seq": 1024, "ckpt": True},
]

# Published figures (cited) and the planner's estimate for the closest configuration.
# Each: (what, published, source, model preset, lora r or None, quant, train overrides, backend).
PUBLISHED = [
    ("8B QLoRA, absolute minimum VRAM (Unsloth, 16-bit embeddings)", "~6 GB",
     "https://unsloth.ai/docs/get-started/fine-tuning-for-beginners/unsloth-requirements",
     "llama8b", 16, "nf4", {"batch_size": 1, "max_length": 512, "gradient_checkpointing": True},
     "unsloth"),
    ("7B QLoRA 4-bit (LLaMA-Factory hardware table, copied in a gist)", "6 GB",
     "https://gist.github.com/bigsnarfdude/50319bbab6c19fced1584f06d0d3e63f",
     "qwen7b", 16, "nf4", {"batch_size": 1, "max_length": 512, "gradient_checkpointing": True},
     "hf"),
    ("7B LoRA 16-bit (same table)", "16 GB",
     "https://gist.github.com/bigsnarfdude/50319bbab6c19fced1584f06d0d3e63f",
     "qwen7b", 16, "none", {"batch_size": 1, "max_length": 512, "gradient_checkpointing": True},
     "hf"),
    ("7B full fine-tune 16-bit, AdamW (same table)", "160 GB",
     "https://gist.github.com/bigsnarfdude/50319bbab6c19fced1584f06d0d3e63f",
     "qwen7b", None, "none", {"batch_size": 1, "max_length": 512, "gradient_checkpointing": True},
     "hf"),
]
NF4_BITS = ("NF4 + double quantization: 4 + 8/64 + 32/(64*256) = 4.127 bits/param (QLoRA, "
            "Dettmers et al. 2023, sec. 3)", "https://arxiv.org/abs/2305.14314")


def published_rows() -> list[dict]:
    """Returns each published figure beside the planner's estimate (A100 80 GB, bf16)."""
    from llmops.planning.memory import estimate

    hw = {"name": "a100_80g", "device": "cuda", "gpu_memory_gb": 80, "bf16": True}
    rows = []
    for what, figure, source, name, r, q, train, backend in PUBLISHED:
        lora = _lora(r)
        t = {"grad_accum": 1, "optimizer": "adamw_torch", "precision": "bf16",
             "backend": backend, **train}
        e = estimate(_preset(name), lora, {"type": q, "double_quant": True}, t, hw)
        rows.append({"what": what, "published": figure, "source": source,
                     "estimate_gb": e["total_gb"], "preset": name})
    return rows


def _lora(r: int) -> dict | None:
    """Returns the planner's adapter dict for rank r (conf/lora's defaults), or None for none."""
    import llmops.conf

    if not r:
        return None
    lora = llmops.conf.load("lora", "r16")
    lora.pop("enabled")
    return {**lora, "r": r}


def _preset(name: str) -> dict:
    import llmops.conf

    return llmops.conf.load("model", name)


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


def _status_gb(field: str) -> float:
    """Reads VmRSS or VmHWM (peak RSS since the last reset) from /proc/self/status, in GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024 / 1024
    return float("nan")


def _reset_peak() -> None:
    """Resets VmHWM so the peak excludes model construction (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def measure(case: dict) -> dict:
    """Runs two training steps of one configuration in this process and returns its peaks."""
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model
    from trl.trainer.utils import add_fused_lm_head

    cuda = torch.cuda.is_available()
    torch.set_num_threads(2)
    base_rss = _status_gb("VmRSS")
    m = _preset(case["model"])
    cls = transformers.Qwen2Config if m["family"] == "qwen2" else transformers.LlamaConfig
    config = cls(
        vocab_size=m["vocab_size"], hidden_size=m["hidden_size"],
        intermediate_size=m["intermediate_size"], num_hidden_layers=m["num_layers"],
        num_attention_heads=m["num_attention_heads"], num_key_value_heads=m["num_kv_heads"],
        tie_word_embeddings=m["tie_embeddings"], max_position_embeddings=4096,
        attn_implementation="sdpa", use_cache=False,
    )
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    n_params = sum(p.numel() for p in model.parameters())
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    if case["ckpt"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if case["lora"]:
        model = get_peft_model(model, LoraConfig(r=case["lora"], lora_alpha=2 * case["lora"],
                                                 lora_dropout=0.05, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    dev = "cuda" if cuda else "cpu"
    ids = torch.randint(0, m["vocab_size"], (case["batch"], case["seq"]), device=dev)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    built_rss = _status_gb("VmRSS")
    _reset_peak()
    t0 = time.time()
    steps = 1 if case["lora"] else 2  # full FT peaks in step 2, once Adam's states exist
    for _ in range(steps):
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=cuda):
            out = model(input_ids=ids, labels=ids, fused_lm_head=True)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {
        "params": n_params, "base_rss_gb": round(base_rss, 2),
        "built_rss_gb": round(built_rss, 2), "peak_rss_gb": round(_status_gb("VmHWM"), 2),
        "ru_maxrss_gb": round(_rss_gb(), 2),
        "cuda_peak_gb": round(torch.cuda.max_memory_allocated() / GIB, 2) if cuda else None,
        "step_s": round((time.time() - t0) / steps, 1), "device": dev,
    }


def _estimate(case: dict, device: str) -> dict:
    from llmops.planning.memory import estimate

    lora = _lora(case["lora"])
    train = {"batch_size": case["batch"], "max_length": case["seq"], "grad_accum": 1,
             "gradient_checkpointing": case["ckpt"], "optimizer": "adamw_torch",
             "precision": "bf16" if device == "cuda" else "fp32", "backend": "hf"}
    hw = {"device": device, "gpu_memory_gb": 80, "bf16": True, "memory_gb": 64}
    return estimate(_preset(case["model"]), lora, {"type": "none"}, train, hw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="Run one small configuration.")
    ap.add_argument("--json", help="Also write the results to this JSON file.")
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(measure(json.loads(args.one))))
        return
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    cases = (GPU_CASES if cuda else CPU_CASES)[: 1 if args.quick else None]
    rows = []
    print(f"{'configuration':44} {'estimate':>9} {'measured':>9} {'ratio':>6}  model-only est/meas")
    for case in cases:
        kind = f"LoRA r{case['lora']}" if case["lora"] else "full FT"
        label = (f"{case['model']} {kind} "
                 f"b{case['batch']} s{case['seq']}{' ckpt' if case['ckpt'] else ''}")
        # Large blocks via mmap, so freed tensors leave the RSS at once and the CPU peak tracks
        # live allocations (glibc's heap otherwise keeps freed memory and the peak drifts 1-3 GB).
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(case)],
                              capture_output=True, text=True, cwd=ROOT, env=env)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            print(f"{label:44} failed: {proc.stderr.strip().splitlines()[-1:]}")
            continue
        meas = json.loads(line[0][7:])
        est = _estimate(case, meas["device"])
        parts = est["parts_gb"]
        if meas["device"] == "cuda":
            e, got = est["total_gb"] - parts["overhead"], meas["cuda_peak_gb"]
            e_model, got_model = e, got
        else:
            e, got = est["total_gb"], meas["peak_rss_gb"]
            e_model, got_model = e - parts["overhead"], got - meas["base_rss_gb"]
        ratio = e / got if got else float("nan")
        print(f"{label:44} {e:8.2f}G {got:8.2f}G {ratio:6.2f}  {e_model:.2f}/{got_model:.2f} "
              f"({e_model / got_model if got_model else float('nan'):.2f})")
        rows.append({"case": label, "estimate_gb": e, "measured_gb": got, "ratio": round(ratio, 3),
                     "model_only_estimate_gb": round(e_model, 2),
                     "model_only_measured_gb": round(got_model, 2), "parts_gb": parts, **meas})
    print("\nPublished figures vs the planner (batch 1 x 512, checkpointing, bf16):")
    published = published_rows()
    for p in published:
        print(f"  - {p['what']}: published {p['published']}, planner ~{p['estimate_gb']:.1f} GB "
              f"({p['preset']}) [{p['source']}]")
    print(f"  - {NF4_BITS[0]}; the planner uses the same formula [{NF4_BITS[1]}]")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": rows, "published": published},
                                              indent=2))


if __name__ == "__main__":
    main()
