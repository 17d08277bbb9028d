"""`python -m llmops dry_run=true` against a bare one-key Hydra app, timed side by side.

    python benchmarks/dry_run.py [--reps 7] [--preset]

Each command runs in a fresh subprocess (so every import is paid), in a temporary folder (so the
run folders land there), interleaved round by round so that load on a shared machine hits both
alike. Prints the median wall time and the median CPU time (user + system, which load on a shared
machine distorts less) of each, and their ratios to the bare app; the target is a dry run within
1.5x the bare app. `--preset` also times `model=qwen3b hardware=a100_40g dry_run=true`.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BARE_APP = '''\
import hydra


@hydra.main(config_path=".", config_name="config", version_base="1.3")
def main(cfg):
    print(cfg.x)


if __name__ == "__main__":
    main()
'''


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _time(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Runs cmd; returns (wall seconds, CPU seconds)."""
    cpu, t0 = _cpu(), time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    took = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr}")
    return took, _cpu() - cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7, help="runs of each command (median taken)")
    ap.add_argument("--preset", action="store_true",
                    help="also time model=qwen3b hardware=a100_40g dry_run=true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "app").mkdir()
        (work / "app" / "bare.py").write_text(BARE_APP)
        (work / "app" / "config.yaml").write_text("x: 1\n")
        env = {**os.environ, "LLMOPS_STORE": str(work / "store")}
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # bytecode cached, as in an installed package
        commands = {
            "bare hydra app (one key)": [sys.executable, str(work / "app" / "bare.py")],
            "llmops dry_run=true": [sys.executable, "-m", "llmops", "dry_run=true"],
        }
        if args.preset:
            commands["llmops model=qwen3b hardware=a100_40g dry_run=true"] = [
                sys.executable, "-m", "llmops", "model=qwen3b", "hardware=a100_40g",
                "dry_run=true"]
        for cmd in commands.values():  # warm the file cache and the bytecode once
            _time(cmd, work, env)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for _ in range(args.reps):
            for name, cmd in commands.items():
                times[name].append(_time(cmd, work, env))
    bare = times["bare hydra app (one key)"]
    bare_wall = statistics.median(t[0] for t in bare)
    bare_cpu = statistics.median(t[1] for t in bare)
    width = max(len(n) for n in commands)
    print(f"{args.reps} runs each, medians; wall and CPU (user+system) seconds, ratio to bare")
    print(f"{'command':<{width}}   wall s   ratio    cpu s   ratio")
    for name, runs in times.items():
        wall = statistics.median(t[0] for t in runs)
        cpu = statistics.median(t[1] for t in runs)
        print(f"{name:<{width}}  {wall:7.3f}  {wall / bare_wall:5.2f}x  {cpu:7.3f}  "
              f"{cpu / bare_cpu:5.2f}x")


if __name__ == "__main__":
    main()
