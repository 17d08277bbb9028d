"""Sweep benchmark: a 4-point rank x learning-rate sweep vs the same 4 points as independent runs.

The sweep is one `python -m llmops -m lora=r8,r16 train.learning_rate=A,B` sharing one stage store;
each independent run is its own `python -m llmops lora=.. train.learning_rate=..` with its own
empty store (what a tool without a stage cache does: build the base, prepare the data and evaluate
the base model once per point). Prints the wall time of each, the ratio, and how many stage
executions the cache saved (counted from the manifests: `ran` vs `cached`).

    python benchmarks/sweep_benchmark.py            # tiny default, small budgets (~5 min, 2 cores)
    python benchmarks/sweep_benchmark.py --quick    # smoke test of the benchmark itself (~1.5 min)

Results also go to WORKDIR/benchmark.json. Runs offline on a CPU; W&B is off (tracking=none).
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

RANKS = ("r8", "r16")
LRS = ("2e-3", "5e-3")
# Small budgets so the benchmark finishes in minutes; the same for both arms.
BUDGET = ["model.pretrain.steps=200", "train.max_steps=60", "eval.limit=40",
          "eval.enforce=false", "progress=false", "tracking=none"]
QUICK = ["model.pretrain.steps=30", "model.pretrain.n_examples=200", "data.n_examples=200",
         "train.max_steps=10", "eval.limit=8", "eval.enforce=false", "progress=false",
         "tracking=none"]


def llmops(args: list[str], cwd: Path) -> float:
    """Runs `python -m llmops ARGS`; returns its wall time. Exits if it fails."""
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "llmops", *args], cwd=cwd, env=env,
                       capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): python -m llmops {' '.join(args)}\n{r.stderr[-3000:]}")
    return seconds


def stage_counts(run_dirs: list[Path]) -> dict[str, dict[str, int]]:
    """Counts, per stage status (ran/cached/...), how many stage executions the manifests hold."""
    counts: dict[str, dict[str, int]] = {}
    for d in run_dirs:
        manifest = json.loads((d / "manifest.json").read_text())
        for name, stage in manifest["stages"].items():
            by = counts.setdefault(stage["status"], {})
            by[name] = by.get(name, 0) + 1
    return counts


def stage_seconds(run_dirs: list[Path]) -> float:
    """Sums the stage durations recorded in the manifests (work, without process start)."""
    total = 0.0
    for d in run_dirs:
        manifest = json.loads((d / "manifest.json").read_text())
        total += sum(s.get("duration_s") or 0 for s in manifest["stages"].values())
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny budgets: checks the benchmark runs")
    p.add_argument("--workdir", type=Path, help="where runs and stores go (default: a temp dir)")
    p.add_argument("--launcher", default=None,
                   help="e.g. joblib: run the sweep with hydra/launcher=joblib n_jobs=2")
    args = p.parse_args()
    budget = QUICK if args.quick else BUDGET
    work = args.workdir or Path(tempfile.mkdtemp(prefix="llmops-sweep-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    points = [(r, lr) for r in RANKS for lr in LRS]
    print(f"workdir {work}; budget: {' '.join(budget)}; load average {os.getloadavg()[0]:.2f}")

    launcher = ([f"hydra/launcher={args.launcher}", "hydra.launcher.n_jobs=2"]
                if args.launcher else [])
    sweep_dir = work / "sweep"
    sweep_s = llmops(["-m", f"lora={','.join(RANKS)}", f"train.learning_rate={','.join(LRS)}",
                      *budget, f"store_dir={work / 'sweep_store'}",
                      f"hydra.sweep.dir={sweep_dir}", *launcher], cwd=work)
    sweep_runs = sorted((d for d in sweep_dir.iterdir() if d.name.isdigit()),
                        key=lambda d: int(d.name))
    print(f"sweep (4 points, one shared store): {sweep_s:.1f}s")

    single_runs, single_s = [], []
    for i, (r, lr) in enumerate(points):
        run_dir = work / f"single{i}" / "run"
        single_s.append(llmops([f"lora={r}", f"train.learning_rate={lr}", *budget,
                                f"store_dir={work / f'single{i}' / 'store'}",
                                f"hydra.run.dir={run_dir}"], cwd=work))
        single_runs.append(run_dir)
        print(f"single run {i} (lora={r} lr={lr}, own empty store): {single_s[-1]:.1f}s")

    sweep_counts, single_counts = stage_counts(sweep_runs), stage_counts(single_runs)
    sweep_ran = sum(sweep_counts.get("ran", {}).values())
    single_ran = sum(single_counts.get("ran", {}).values())
    total_single = sum(single_s)
    result = {
        "points": [f"lora={r} train.learning_rate={lr}" for r, lr in points],
        "budget": budget, "launcher": args.launcher,
        "sweep_s": round(sweep_s, 1), "single_s": [round(s, 1) for s in single_s],
        "singles_total_s": round(total_single, 1), "ratio": round(sweep_s / total_single, 3),
        "sweep_stage_s": round(stage_seconds(sweep_runs), 1),
        "singles_stage_s": round(stage_seconds(single_runs), 1),
        "stage_executions": {"sweep_ran": sweep_ran, "singles_ran": single_ran,
                             "saved": single_ran - sweep_ran},
        "sweep_ran_by_stage": sweep_counts.get("ran", {}),
        "sweep_cached_by_stage": sweep_counts.get("cached", {}),
    }
    (work / "benchmark.json").write_text(json.dumps(result, indent=2))

    print("\n== sweep benchmark (tiny default, CPU) ==")
    print(f"4 independent runs: {total_single:.1f}s  ({' + '.join(f'{s:.1f}' for s in single_s)})")
    print(f"one 4-point sweep:  {sweep_s:.1f}s")
    print(f"ratio sweep / independent runs: {result['ratio']:.2f} "
          f"({total_single / sweep_s:.1f}x faster)")
    print(f"stage time in manifests: sweep {result['sweep_stage_s']}s vs independent "
          f"{result['singles_stage_s']}s (the rest is process start and imports)")
    print(f"stage executions: sweep ran {sweep_ran}, independent runs ran {single_ran}: "
          f"the cache saved {single_ran - sweep_ran}")
    ran = ", ".join(f"{k} x{v}" for k, v in result["sweep_ran_by_stage"].items())
    cached = ", ".join(f"{k} x{v}" for k, v in result["sweep_cached_by_stage"].items())
    print(f"  sweep ran:    {ran}\n  sweep cached: {cached or 'nothing'}")
    print(f"results: {work / 'benchmark.json'}; leaderboard: python -m llmops.compare {sweep_dir}")


if __name__ == "__main__":
    main()
