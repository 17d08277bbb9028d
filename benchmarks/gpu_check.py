"""One script for a machine with a CUDA GPU: everything llmops cannot check on a CPU, with figures.

Runs, each as a real subprocess with its own time limit so one hang cannot eat the others:

1. ``env``: torch/CUDA/bf16, the GPU, and whether unsloth, bitsandbytes and llama-cpp-python import.
2. ``gpu tests``: ``pytest -m gpu`` (the unsloth backend, bf16, nf4 on CUDA, the real-vocabulary
   Qwen2/Llama end-to-end variants; each skips cleanly without what it needs).
3. ``calibration``: benchmarks/compute_calibration.py on the GPU set: the planner's estimate vs
   ``torch.cuda.max_memory_allocated`` per configuration, with the ratio.
4. ``ddp`` / ``fsdp``: the tiny default trained through the multi-process launcher on one GPU
   (``distributed=ddp|fsdp distributed.nproc_per_node=1``, NCCL), reading world size and exact
   match from the run's reports.

Prints every figure and a summary table, writes them to ``--json`` (default gpu_check.json), and
finishes within ~10 minutes on one GPU (the limits below add up to 540 s).

    python benchmarks/gpu_check.py
    python benchmarks/gpu_check.py --skip calibration --json /tmp/gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ENV_PROBE = r"""
import importlib.util, json, torch
out = {"torch": torch.__version__, "cuda": torch.cuda.is_available(),
       "cuda_version": torch.version.cuda}
if out["cuda"]:
    out["gpu"] = torch.cuda.get_device_name(0)
    out["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    out["bf16"] = torch.cuda.is_bf16_supported()
    out["device_count"] = torch.cuda.device_count()
for name in ("unsloth", "bitsandbytes", "llama_cpp", "deepspeed", "flash_attn"):
    out[name] = importlib.util.find_spec(name) is not None
try:
    import bitsandbytes, transformers, trl, peft
    out.update(bitsandbytes_version=bitsandbytes.__version__,
               transformers=transformers.__version__, trl=trl.__version__, peft=peft.__version__)
except Exception as e:  # noqa: BLE001 - report, never stop the check
    out["import_error"] = repr(e)
print("GPUCHECK " + json.dumps(out))
"""


def run(label: str, cmd: list[str], limit: int, env: dict[str, str] | None = None) -> dict:
    """Runs one command with a time limit, streams its output, and returns rc, seconds, tail."""
    print(f"\n=== {label}: {' '.join(cmd)} (limit {limit} s)", flush=True)
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=limit,
                              env={**os.environ, **(env or {})})
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc = 124
        out = ((exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes)
               else exc.stdout or "") + "\n[timed out]"
    seconds = round(time.monotonic() - start, 1)
    tail = "\n".join(out.strip().splitlines()[-25:])
    print(tail, flush=True)
    print(f"--- {label}: rc {rc} in {seconds} s", flush=True)
    return {"label": label, "rc": rc, "seconds": seconds, "output": out}


def env_facts() -> dict:
    """Returns the GPU and package facts (section 1)."""
    res = run("env", [sys.executable, "-c", ENV_PROBE], 120)
    for line in res["output"].splitlines():
        if line.startswith("GPUCHECK "):
            res["facts"] = json.loads(line[len("GPUCHECK "):])
    return res


def gpu_tests() -> dict:
    """Runs the gpu-marked tests (section 2) and counts passed/skipped/failed."""
    res = run("gpu tests", [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs",
                            "-p", "no:cacheprovider"], 240, {"LLMOPS_REQUIRE_GGUF": "0"})
    last = [ln for ln in res["output"].splitlines() if " in " in ln and ("passed" in ln
                                                                       or "skipped" in ln)]
    res["summary"] = last[-1].strip("= ") if last else None
    return res


def calibration() -> dict:
    """Runs the planner-vs-measured memory calibration on the GPU set (section 3)."""
    out = Path(tempfile.mkdtemp()) / "calibration.json"
    res = run("calibration", [sys.executable, "benchmarks/compute_calibration.py",
                              "--json", str(out)], 180)
    if out.is_file():
        res["results"] = json.loads(out.read_text())
    return res


def launcher(strategy: str) -> dict:
    """Trains the tiny default through the multi-process launcher on one GPU (section 4)."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"gpucheck-{strategy}-"))
    store = run_dir / "store"
    res = run(strategy, [sys.executable, "-m", "llmops", f"distributed={strategy}",
                         "distributed.nproc_per_node=1", "hardware=auto", "train.max_steps=60",
                         "deploy=none", f"hydra.run.dir={run_dir}/run", f"store_dir={store}"],
              90 if strategy == "fsdp" else 120)
    reports = {p.name: p for p in (run_dir / "run").rglob("*_report.json")}
    if "training_report.json" in reports:
        t = json.loads(reports["training_report.json"].read_text())
        res["training"] = {k: t.get(k) for k in ("world_size", "strategy", "launcher",
                                                 "sharded_by", "device", "backend", "steps",
                                                 "peak_memory_mb", "train_runtime_s")}
    if "eval_report.json" in reports:
        e = json.loads(reports["eval_report.json"].read_text())
        res["exact_match"] = {"base": (e.get("base") or {}).get("exact_match"),
                              "tuned": (e.get("tuned") or {}).get("exact_match")}
    return res


SECTIONS = {"env": env_facts, "tests": gpu_tests, "calibration": calibration,
            "ddp": lambda: launcher("ddp"), "fsdp": lambda: launcher("fsdp")}


def main() -> int:
    """Runs the sections, prints a summary, writes the JSON; exits 1 if any section failed."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip", action="append", default=[], choices=list(SECTIONS))
    ap.add_argument("--json", default="gpu_check.json", help="where to write every figure")
    args = ap.parse_args()
    results = {}
    for name, fn in SECTIONS.items():
        if name not in args.skip:
            results[name] = fn()
    print("\n=== summary")
    for name, res in results.items():
        extra = {k: v for k, v in res.items() if k not in ("label", "rc", "seconds", "output")}
        print(f"{name:12s} rc={res['rc']:<4} {res['seconds']:>6} s  {json.dumps(extra)[:400]}")
    Path(args.json).write_text(json.dumps(
        {k: {kk: vv for kk, vv in v.items() if kk != "output"} | {"tail": v["output"][-4000:]}
         for k, v in results.items()}, indent=2, default=str))
    print(f"figures written to {args.json}")
    return 0 if all(r["rc"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
