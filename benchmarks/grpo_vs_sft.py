"""GRPO after SFT vs SFT alone, side by side: `python -m llmops train=sft` and
`python -m llmops train=sft_grpo` with the same seed and budgets on one stage store.

The sft_grpo run takes base, data, eval_base and sft from the store (the first run built them),
so its wall time is GRPO's own plus its eval. Prints each run's tuned exact match (the
no_regression gate's metric), the held-out mean reward before/after GRPO, and the wall times.

    python benchmarks/grpo_vs_sft.py --demo     # the demo's own budgets, a 300-row test split
    python benchmarks/grpo_vs_sft.py            # small budgets (minutes on 2 cores)
    python benchmarks/grpo_vs_sft.py --quick    # smoke test of the benchmark itself

Each run's tool-row exact match is compared as the no_regression gate compares tuned with base:
the SFT-only run's is the base, the tolerance the gate's one-sided z-test at the split's size
(``llmops.scoring.tolerance``).

Results also go to WORKDIR/grpo_vs_sft.json. Runs offline on a CPU; W&B is off.
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

BUDGET = ["model.pretrain.steps=200", "train.max_steps=60", "eval.limit=80",
          "eval.enforce=false", "progress=false", "tracking=none", "deploy=none",
          "usecase=none", "seed=0"]
# The demo as `python -m llmops` runs it (1,200 rows, 1,200 pre-training steps, SFT 3 epochs,
# GRPO 100 steps), its test split a quarter of the rows (300) so a gap means something.
DEMO = ["data.test_fraction=0.25", "eval.enforce=false", "progress=false", "tracking=none",
        "seed=0"]
QUICK = ["model.pretrain.steps=30", "model.pretrain.n_examples=200", "data.n_examples=200",
         "train.max_steps=10", "eval.limit=8", "eval.enforce=false", "progress=false",
         "tracking=none", "deploy=none", "usecase=none", "seed=0"]


def run(args: list[str], cwd: Path) -> float:
    """Runs `python -m llmops ARGS`; returns its wall time. Exits if it fails."""
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "llmops", *args], cwd=cwd, env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): python -m llmops {' '.join(args)}\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def no_regression(sft: dict, grpo: dict) -> dict:
    """The no_regression gate's check of the sft_grpo run with the SFT-only run as its base:
    tool-row exact match, tolerance by the split's size (one-sided z-test at 95%)."""
    from llmops.scoring.tolerance import Sample, tolerance

    base, tuned = sft["tool_exact_match"], grpo["tool_exact_match"]
    if base is None or tuned is None or not sft["tool_rows"]:
        return {"passed": None, "reason": "no tool rows"}
    tol, rule = tolerance(Sample(base, sft["tool_rows"]), Sample(tuned, grpo["tool_rows"]), 0.95)
    return {"metric": "tool.exact_match", "sft": base, "sft_grpo": tuned,
            "tolerance": round(tol, 4), "passed": tuned >= base - tol, "rule": rule}


def main(argv: list[str] | None = None) -> int:
    """Runs both; prints and writes the comparison."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny budgets (a smoke test)")
    p.add_argument("--demo", action="store_true", help="the demo's own budgets, 300 test rows")
    p.add_argument("--grpo-steps", type=int, default=None, help="train.grpo.max_steps")
    p.add_argument("--workdir", type=Path, default=None)
    a = p.parse_args(argv)
    work = a.workdir or Path(tempfile.mkdtemp(prefix="llmops_grpo_vs_sft_"))
    work.mkdir(parents=True, exist_ok=True)
    budget = QUICK if a.quick else DEMO if a.demo else BUDGET
    common = [*budget, f"store_dir={work / 'store'}"]
    out = {}
    for method in ("sft", "sft_grpo"):
        extra = [f"++train.grpo.max_steps={a.grpo_steps}"] if a.grpo_steps and method != "sft" \
            else []
        run_dir = work / method
        seconds = run([f"train={method}", *common, *extra, f"hydra.run.dir={run_dir}"], work)
        ev = json.loads((run_dir / "eval_report.json").read_text())
        manifest = json.loads((run_dir / "manifest.json").read_text())
        out[method] = {"wall_s": round(seconds, 1), "tuned_exact_match": ev["tuned"].get(
            "exact_match"), "base_exact_match": ev["base"].get("exact_match"),
            "test_rows": ev["tuned"].get("counts", {}).get("total"),
            "tool_exact_match": ev["metrics_by_kind"]["tool"]["tuned"].get("exact_match"),
            "tool_rows": ev["metrics_by_kind"]["tool"]["count"],
            "stages": {n: s["status"] for n, s in manifest["stages"].items()}}
        if method == "sft_grpo":
            rep = json.loads((run_dir / "grpo_report.json").read_text())
            out[method]["held_out"] = rep["held_out"]
            out[method]["grpo_steps"] = rep["steps"]
            out[method]["grpo_train_s"] = rep["train_runtime_s"]
    out["no_regression"] = no_regression(out["sft"], out["sft_grpo"])
    (work / "grpo_vs_sft.json").write_text(json.dumps(out, indent=2))
    for method in ("sft", "sft_grpo"):
        r = out[method]
        print(f"train={method}: tuned exact_match {r['tuned_exact_match']} (base "
              f"{r['base_exact_match']}, {r['test_rows']} test rows), wall {r['wall_s']} s, "
              f"stages {r['stages']}")
    print(f"no_regression (SFT-only as the base): {out['no_regression']}")
    held = out["sft_grpo"]["held_out"]
    print(f"grpo held-out mean reward: sft {held['sft'].get('mean_reward')} -> grpo "
          f"{held['grpo'].get('mean_reward')}; results in {work / 'grpo_vs_sft.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
