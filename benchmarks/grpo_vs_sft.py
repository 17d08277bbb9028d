"""GRPO after SFT vs SFT alone, side by side: `python -m llmops train=sft` and
`python -m llmops train=sft_grpo` with the same seed and budgets on one stage store.

The sft_grpo run takes base, data, eval_base and sft from the store (the first run built them),
so its wall time is GRPO's own plus its eval. Prints each run's tuned exact match (the
no_regression gate's metric), the held-out mean reward before/after GRPO, and the wall times.

    python benchmarks/grpo_vs_sft.py            # small budgets (minutes on 2 cores)
    python benchmarks/grpo_vs_sft.py --quick    # smoke test of the benchmark itself

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


def main(argv: list[str] | None = None) -> int:
    """Runs both; prints and writes the comparison."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny budgets (a smoke test)")
    p.add_argument("--grpo-steps", type=int, default=None, help="train.grpo.max_steps")
    p.add_argument("--workdir", type=Path, default=None)
    a = p.parse_args(argv)
    work = a.workdir or Path(tempfile.mkdtemp(prefix="llmops_grpo_vs_sft_"))
    work.mkdir(parents=True, exist_ok=True)
    common = [*(QUICK if a.quick else BUDGET), f"store_dir={work / 'store'}"]
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
            "stages": {n: s["status"] for n, s in manifest["stages"].items()}}
        if method == "sft_grpo":
            rep = json.loads((run_dir / "grpo_report.json").read_text())
            out[method]["held_out"] = rep["held_out"]
            out[method]["grpo_steps"] = rep["steps"]
            out[method]["grpo_train_s"] = rep["train_runtime_s"]
    (work / "grpo_vs_sft.json").write_text(json.dumps(out, indent=2))
    for method, r in out.items():
        print(f"train={method}: tuned exact_match {r['tuned_exact_match']} (base "
              f"{r['base_exact_match']}, {r['test_rows']} test rows), wall {r['wall_s']} s, "
              f"stages {r['stages']}")
    held = out["sft_grpo"]["held_out"]
    print(f"grpo held-out mean reward: sft {held['sft'].get('mean_reward')} -> grpo "
          f"{held['grpo'].get('mean_reward')}; results in {work / 'grpo_vs_sft.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
