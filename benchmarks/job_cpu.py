"""CPU seconds of a `python -m llmops` job: per process (runner, stage process) and per stage.

    python benchmarks/job_cpu.py [--reps N] [--baseline REV] [--importtime] [--keep DIR]

Runs, in a temporary folder with one fresh store, the jobs the test suite runs by the hundred:

- small: a small tiny-default chain (quick pre-training, 8 SFT steps, 120 rows), every stage runs;
- cached: the same job again in a new run folder: every stage comes from the store;
- data: a data-only job (train/eval/deploy off, another row count): the base is cached, data runs;

and, as floors measured in the same run, `python -c pass`, `python -c "import torch"` and
`python -c "import torch, transformers, peft, trl"`. CPU is user + system time (load on a shared
machine distorts it far less than wall time). The job's process tree is sampled with psutil every
50 ms; a stage's CPU in the stage process is the growth between the log lines that say the
previous and this stage finished (the stage process is idle between stages), the runner's own CPU
before its first stage is its start (Hydra compose, validate, compile). Prints a table and the
ratios to the `import torch` floor. `--baseline REV` runs the same jobs on the llmops of a git
revision (e.g. the commit before a change), interleaved with this checkout's, and prints total /
baseline.

`--importtime` runs the small job once more with PYTHONPROFILEIMPORTTIME=1 (which inflates what
it measures) and prints, for the runner and for each stage, the top-level packages the process
imported there and their cumulative import time.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SMALL = ["usecase=none", "progress=false", "model.pretrain.steps=30",
         "model.pretrain.n_examples=200", "data.n_examples=120", "train.max_steps=8",
         "eval.enforce=false"]
DATA_ONLY = ["train=none", "eval=none", "deploy=none", "usecase=none", "progress=false",
             "model.pretrain.steps=30", "model.pretrain.n_examples=200", "data.n_examples=100"]
FLOORS = {"python -c pass": "pass", "import torch": "import torch",
          "import torch, transformers, peft, trl": "import torch, transformers, peft, trl"}
EVENT = re.compile(r"\[(\d+)/(\d+)\] (\w+): (running|done|resumed and done|cached)")
IMPORT = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def _env() -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "WANDB_MODE": "disabled"}
    env.pop("LLMOPS_STORE", None)
    return env


def _cpu(proc) -> float:
    """User + system CPU of a psutil process and of its children it waited for."""
    t = proc.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def _floor(code: str) -> float:
    """CPU seconds of `python -c code`, from wait4's rusage."""
    proc = subprocess.Popen([sys.executable, "-c", code], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime


class Job:
    """One `python -m llmops ARGS` run, its process tree sampled and its log lines timed."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]):
        self.args, self.cwd, self.env = args, cwd, env
        self.events: list[tuple[float, str, str]] = []  # (time, stage, what)
        self.samples: list[tuple[float, float, float]] = []  # (time, runner CPU, stage proc CPU)
        self.lines: list[str] = []

    def run(self) -> None:
        import psutil

        proc = subprocess.Popen([sys.executable, "-m", "llmops", *self.args], cwd=self.cwd,
                                env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace")
        reader = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        reader.start()
        me = psutil.Process(proc.pid)
        child = None
        child_cpu = 0.0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:  # reaped here, so its rusage (it and the stage process it waited for) is ours
                break
            try:
                own = _cpu(me)
                if child is None:
                    child = next((c for c in me.children()
                                  if "llmops.runner.child" in " ".join(c.cmdline())), None)
                if child is not None:
                    child_cpu = _cpu(child)
            except psutil.Error:
                pass
            else:
                self.samples.append((time.monotonic(), own, child_cpu))
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        reader.join()
        self.total = usage.ru_utime + usage.ru_stime
        self.returncode = proc.returncode
        if self.returncode != 0:
            raise SystemExit(f"llmops {' '.join(self.args)} exited {self.returncode}:\n"
                             + "".join(self.lines[-40:]))

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line)
            found = EVENT.search(line)
            if found:
                self.events.append((time.monotonic(), found.group(3), found.group(4)))

    def _at(self, t: float) -> tuple[float, float]:
        """(runner CPU, stage process CPU) at the first sample after t (the last if none)."""
        for ts, own, child in self.samples:
            if ts >= t:
                return own, child
        return self.samples[-1][1:]

    def figures(self) -> dict:
        """Per-process totals and per-stage CPU of the stage process."""
        last_child = self.samples[-1][2] if self.samples else 0.0
        # The runner's own CPU: its total (wait4: it and the stage process it waited for) less
        # the stage process's last sample (50 ms at most before it ended).
        runner = self.total - last_child
        start = self._at(self.events[0][0])[0] if self.events else runner
        stages: dict[str, tuple[str, float]] = {}
        before = 0.0
        for t, name, what in self.events:
            if what == "running":
                continue
            child = self._at(t)[1]
            stages[name] = ("cached" if what == "cached" else "ran", child - before)
            before = child
        return {"runner": runner, "runner_start": min(start, runner),
                "stage_process": last_child, "total": runner + last_child, "stages": stages}


def _import_report(lines: list[str]) -> list[tuple[str, dict[str, float]]]:
    """Splits the merged output of a job run with PYTHONPROFILEIMPORTTIME=1 into the runner's
    imports (before the first stage) and each stage's; returns, per part, the cumulative import
    seconds of each top-level package imported there."""
    parts: list[tuple[str, dict[str, float]]] = [("runner", {})]
    for line in lines:
        event = EVENT.search(line)
        if event and event.group(4) == "running":
            parts.append((event.group(3), {}))
            continue
        found = IMPORT.search(line)
        if found and len(found.group(3)) <= 1:  # a top-level import of the process
            root = found.group(4).split(".")[0]
            part = parts[-1][1]
            part[root] = part.get(root, 0.0) + int(found.group(2)) / 1e6
    return parts


def _checkout(rev: str, out: Path) -> Path:
    """Extracts llmops/, conf/ and sweeps/ of a git revision into out, laid out as the installed
    package (conf/ is the package llmops.conf; its sweeps link points at sweeps/)."""
    repo = Path(__file__).resolve().parent.parent
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(repo), "archive", rev, "llmops", "conf", "sweeps"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    (out / "conf").rename(out / "llmops" / "conf")
    link = out / "llmops" / "conf" / "sweeps"
    if link.is_symlink():
        link.unlink()
        link.symlink_to(out / "sweeps", target_is_directory=True)
    return out


def _jobs(tmp: Path, env: dict[str, str]) -> dict[str, dict]:
    """Runs the small job, its cached rerun and the data-only job on a fresh store in tmp."""
    store = tmp / "store"
    shutil.rmtree(store, ignore_errors=True)
    out = {}
    for name, extra in (("small", SMALL), ("cached", SMALL), ("data", DATA_ONLY)):
        run_dir = tmp / "runs" / name
        shutil.rmtree(run_dir, ignore_errors=True)
        job = Job([*extra, f"store_dir={store}", f"hydra.run.dir={run_dir}"], tmp, env)
        job.run()
        out[name] = job.figures()
    return out


def _median_figures(reps: list[dict[str, dict]]) -> dict[str, dict]:
    """The median over repetitions of each job's figures (each stage's too)."""
    med = statistics.median
    out = {}
    for name in reps[0]:
        runs = [r[name] for r in reps]
        stages = {stage: (status, med([r["stages"].get(stage, (status, 0.0))[1] for r in runs]))
                  for stage, (status, _) in runs[0]["stages"].items()}
        out[name] = {key: med([r[key] for r in runs]) for key in
                     ("total", "runner", "runner_start", "stage_process")}
        out[name]["stages"] = stages
    return out


def _print_jobs(title: str, jobs: dict[str, dict], torch_floor: float,
                base: dict[str, dict] | None = None) -> None:
    print(f"\n{title}")
    print(f"{'job':8} {'total':>7} {'runner':>7} {'start':>7} {'stages':>7} {'x torch':>8}"
          + (f" {'x base':>7}" if base else ""))
    for name, f in jobs.items():
        print(f"{name:8} {f['total']:7.2f} {f['runner']:7.2f} {f['runner_start']:7.2f} "
              f"{f['stage_process']:7.2f} {f['total'] / torch_floor:8.2f}"
              + (f" {f['total'] / base[name]['total']:7.2f}" if base else ""))
    for name, f in jobs.items():
        ran = [f"{stage} {cpu:.2f}" for stage, (status, cpu) in f["stages"].items()
               if status == "ran"]
        cached = [stage for stage, (status, _) in f["stages"].items() if status == "cached"]
        print(f"  {name:8} ran: {', '.join(ran) or '-'}"
              + (f"; cached: {', '.join(cached)}" if cached else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=1, help="repetitions (medians are shown)")
    ap.add_argument("--baseline", metavar="REV",
                    help="a git revision of this repository (e.g. HEAD~1): its llmops runs the "
                         "same jobs, interleaved with this checkout's, through PYTHONPATH")
    ap.add_argument("--importtime", action="store_true",
                    help="also break the small job's imports down by stage and package")
    ap.add_argument("--keep", type=Path, help="run in this folder and keep it")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="job_cpu.")) if args.keep is None else args.keep
    tmp.mkdir(parents=True, exist_ok=True)
    env = _env()
    variants = {"this checkout": env}
    if args.baseline is not None:
        tree = _checkout(args.baseline, tmp / "baseline_tree")
        base_env = {**env, "PYTHONPATH": os.pathsep.join(
            p for p in (str(tree), env.get("PYTHONPATH")) if p)}
        variants = {"baseline": base_env, **variants}
    try:
        floors = {name: [] for name in FLOORS}
        reps: dict[str, list] = {name: [] for name in variants}
        for _ in range(args.reps):
            for name, code in FLOORS.items():
                floors[name].append(_floor(code))
            for name, venv in variants.items():
                folder = tmp / name.replace(" ", "_")
                folder.mkdir(exist_ok=True)
                reps[name].append(_jobs(folder, venv))
        floor = {name: statistics.median(v) for name, v in floors.items()}
        torch_floor = floor["import torch"]
        print(f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; CPU seconds "
              f"(user + system), median of {args.reps}\n")
        print(f"{'floor':42} {'CPU s':>7} {'x torch':>8}")
        for name, cpu in floor.items():
            print(f"{name:42} {cpu:7.2f} {cpu / torch_floor:8.2f}")
        figures = {name: _median_figures(r) for name, r in reps.items()}
        print("\n(start: the runner before its first stage; stages: the stage process; "
              "x base: total / the baseline's)")
        for name, jobs in figures.items():
            base = figures.get("baseline") if name != "baseline" else None
            _print_jobs(name, jobs, torch_floor, base)
        if args.importtime:
            folder = tmp / "imports"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            job = Job([*SMALL, f"store_dir={folder / 'store'}", f"hydra.run.dir={folder / 'run'}"],
                      folder, {**env, "PYTHONPROFILEIMPORTTIME": "1"})
            job.run()
            print("\nimports of the small job (PYTHONPROFILEIMPORTTIME; cumulative s, >= 0.05):")
            for part, roots in _import_report(job.lines):
                top = sorted(roots.items(), key=lambda kv: -kv[1])
                shown = ", ".join(f"{root} {s:.2f}" for root, s in top if s >= 0.05)
                print(f"  {part:10} {sum(roots.values()):6.2f}  {shown}")
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
