"""`python -m llmops dry_run=true` against a bare one-key Hydra app, timed side by side.

    python benchmarks/dry_run.py [--reps 7] [--preset] [--instructions]

Each command runs in a fresh subprocess (so every import is paid), in a temporary folder (so the
run folders land there), interleaved round by round so that load on a shared machine hits both
alike. Prints the median wall time and the median CPU time (user + system, which load on a shared
machine distorts less) of each, the best CPU time of the rounds (the least disturbed), and their
ratios to the bare app; the target is a dry run within 1.5x the bare app. `--preset` also times
`model=qwen3b hardware=a100_40g dry_run=true`. `--instructions` also counts the instructions each
command executes, once, under valgrind's callgrind (when valgrind is installed): a figure that
load does not move at all.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
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


def _instructions(cmd: list[str], cwd: Path, env: dict[str, str]) -> int:
    """Runs cmd once under callgrind; returns the instructions it executed (its `Collected`)."""
    done = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *cmd],
                          cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"valgrind {' '.join(cmd)} exited {done.returncode}:\n{done.stderr}")
    return int(found.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7, help="runs of each command (median taken)")
    ap.add_argument("--preset", action="store_true",
                    help="also time model=qwen3b hardware=a100_40g dry_run=true")
    ap.add_argument("--instructions", action="store_true",
                    help="also count each command's instructions under valgrind's callgrind")
    args = ap.parse_args()
    if args.instructions and shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
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
        counts = ({name: _instructions(cmd, work, env) for name, cmd in commands.items()}
                  if args.instructions else {})
    bare = times["bare hydra app (one key)"]
    bare_wall = statistics.median(t[0] for t in bare)
    bare_cpu = statistics.median(t[1] for t in bare)
    bare_best = min(t[1] for t in bare)
    width = max(len(n) for n in commands)
    print(f"{args.reps} runs each: median wall and CPU (user+system) seconds, the best CPU "
          "seconds; ratio to bare")
    print(f"{'command':<{width}}   wall s   ratio    cpu s   ratio   best s   ratio"
          + ("   instructions   ratio" if counts else ""))
    for name, runs in times.items():
        wall = statistics.median(t[0] for t in runs)
        cpu = statistics.median(t[1] for t in runs)
        best = min(t[1] for t in runs)
        line = (f"{name:<{width}}  {wall:7.3f}  {wall / bare_wall:5.2f}x  {cpu:7.3f}  "
                f"{cpu / bare_cpu:5.2f}x  {best:7.3f}  {best / bare_best:5.2f}x")
        if counts:
            ratio = counts[name] / counts["bare hydra app (one key)"]
            line += f"  {counts[name] / 1e6:11,.0f}M  {ratio:5.2f}x"
        print(line)


if __name__ == "__main__":
    main()
