"""Method sweep: `python -m llmops -m train=sft,sft_dpo,sft_grpo` on one stage store.

The data stage does not depend on the method, so the three jobs prepare the data, build the tiny
base, evaluate the base and train SFT once (jobs 1 and 2 find them cached) and differ only in the
method's own stage and what follows it. Prints, per job, each stage's status (ran / cached) and
wall time, then `python -m llmops.compare` on the sweep (the method a column of its table).

    python benchmarks/method_sweep.py              # small budgets (~6 min on 2 busy cores)
    python benchmarks/method_sweep.py --quick      # smoke test of the benchmark itself

Results also go to WORKDIR/method_sweep.json. Runs offline on a CPU; W&B is off.
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

METHODS = ("sft", "sft_dpo", "sft_grpo")
BUDGET = ["model.pretrain.steps=200", "train.max_steps=60",
          "eval.limit=40", "eval.enforce=false", "progress=false",
          "tracking=none", "deploy=none", "usecase=none"]
QUICK = ["model.pretrain.steps=30", "model.pretrain.n_examples=200", "data.n_examples=200",
         "train.max_steps=10",
         "eval.limit=8", "eval.enforce=false", "progress=false", "tracking=none", "deploy=none",
         "usecase=none"]


def run(args: list[str], cwd: Path) -> tuple[float, str]:
    """Runs `python -m ARGS`; returns its wall time and stdout. Exits if it fails."""
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True,
                       text=True)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): python -m {' '.join(args)}\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0, r.stdout


def main(argv: list[str] | None = None) -> int:
    """Runs the sweep and the comparison; prints and writes what each job ran and reused."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny budgets (a smoke test)")
    p.add_argument("--workdir", type=Path, default=None)
    a = p.parse_args(argv)
    work = a.workdir or Path(tempfile.mkdtemp(prefix="llmops_method_sweep_"))
    work.mkdir(parents=True, exist_ok=True)
    sweep = work / "sweep"
    seconds, _ = run(["llmops", "-m", f"train={','.join(METHODS)}",
                      *(QUICK if a.quick else BUDGET), f"store_dir={work / 'store'}",
                      f"hydra.sweep.dir={sweep}"], work)
    jobs = {}
    for i, method in enumerate(METHODS):
        manifest = json.loads((sweep / str(i) / "manifest.json").read_text())
        jobs[method] = {name: {"status": s["status"], "seconds": round(s.get("duration_s") or 0, 1)}
                        for name, s in manifest["stages"].items()}
        print(f"job {i} train={method}: " + ", ".join(
            f"{n} {s['status']}" for n, s in jobs[method].items()))
    _, table = run(["llmops.compare", str(sweep)], work)
    print(table)
    shared = [n for n in ("base", "data", "eval_base", "sft")
              if all(jobs[m].get(n, {}).get("status") == "cached" for m in METHODS[1:])]
    result = {"methods": list(METHODS), "sweep_seconds": round(seconds, 1), "jobs": jobs,
              "shared_by_jobs_1_2": shared, "sweep_dir": str(sweep)}
    (work / "method_sweep.json").write_text(json.dumps(result, indent=2))
    print(f"sweep wall time {seconds:.0f} s; stages jobs 1-2 took from the store: "
          f"{', '.join(shared) or 'none'}; results in {work / 'method_sweep.json'}")
    return 0 if {"data", "sft"} <= set(shared) else 1


if __name__ == "__main__":
    sys.exit(main())
