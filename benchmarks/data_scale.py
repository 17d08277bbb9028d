"""Data-scale benchmark: llmops's reader + converter + tool-call checks vs plain datasets.

Generates N OpenAI-format chat rows with tools and tool calls (1% of them dirty: an unknown tool,
a wrong-typed or missing argument) as JSON Lines in a temp folder, then runs, each in a fresh
process with an empty datasets cache:

- ``llmops``: ``readers.read_source`` + ``prepare.lint`` (every tool call parsed and validated
  against its JSON Schema, turn order, answers to call ids) + a 90/10 ``train_test_split``;
- ``plain``: ``datasets.load_dataset("json")`` + the same split (no conversion, no checks);
- ``stage``: the real data stage (``llmops.stages.data.run`` with the params ``data=files
  data.path=FILE`` compiles to): read, measure, check, dedup, split, and write train/val/test.jsonl
  and data_report.json. Token lengths come from ``--tokenizer DIR`` (a model folder, e.g. the tiny
  base from the store), else they are estimated, as the stage does without a tokenizer.

Prints rows/s, CPU seconds (the process and its workers, user + system) and peak memory (the
process's max RSS plus its largest worker's) of each, the time ratio, the load average before and
after (the box may be shared), and whether the stage met the target: 1M rows in under 2 minutes
on 2 cores, peak under 2 GB (below 1M rows, the same pace: 120 s per million rows).

    python benchmarks/data_scale.py                 # 100K rows
    python benchmarks/data_scale.py --rows 1000000  # 1M rows (~1 GB of JSONL)
    python benchmarks/data_scale.py --tokenizer outputs/store/base/<fp>   # lengths in real tokens
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TITLES = ("buy milk", "call mom", "pay rent", "fix the bike", "walk the dog", "plan the trip")
TOOLS = [
    {"type": "function", "function": {"name": "create_task", "description": "Creates a task.",
     "parameters": {"type": "object", "properties": {
         "title": {"type": "string"}, "due": {"type": "string"},
         "priority": {"type": "string", "enum": ["low", "medium", "high"]}},
         "required": ["title"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "complete_task", "description": "Completes a task.",
     "parameters": {"type": "object", "properties": {"task_id": {"type": "integer"}},
                    "required": ["task_id"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "list_tasks", "description": "Lists tasks.",
     "parameters": {"type": "object", "properties": {
         "status": {"type": "string", "enum": ["open", "done"]}}, "additionalProperties": False}}},
]


def _row(rng: random.Random, i: int) -> dict:
    kind = rng.randrange(3)
    if kind == 0:
        args: dict = {"title": rng.choice(TITLES), "priority": rng.choice(("low", "high"))}
        name, user = "create_task", f"Add a task to {args['title']} ({i})."
    elif kind == 1:
        args, name = {"task_id": rng.randint(1, 999)}, "complete_task"
        user = f"Complete task {args['task_id']}."
    else:
        args, name, user = {"status": rng.choice(("open", "done"))}, "list_tasks", "List tasks."
    if i % 100 == 7:  # 1% dirty rows, three kinds
        name, args = [("craete_task", args), ("complete_task", {"task_id": "seven"}),
                      ("create_task", {"due": "2025-01-01"})][i % 3]
    call_id = f"call_{i}"
    return {"messages": [
        {"role": "system", "content": "You are Task-API."},
        {"role": "user", "content": user},
        {"role": "assistant", "content": None, "tool_calls": [{"id": call_id, "type": "function",
         "function": {"name": name, "arguments": json.dumps(args)}}]},
        {"role": "tool", "tool_call_id": call_id, "content": '{"ok": true}'},
        {"role": "assistant", "content": "Done."}], "tools": TOOLS}


def generate(path: Path, n: int, seed: int = 0) -> None:
    """Writes n chat rows with tool calls to path as JSON Lines."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps(_row(rng, i)) + "\n")


TARGET_ROWS, TARGET_SECONDS, TARGET_MB = 1_000_000, 120.0, 2048


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _peak_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024


def run_stage(path: str, num_proc: int | None, tokenizer: str | None) -> dict:
    """Runs the data stage on the file with compiled params; returns its counts and codes."""
    import logging

    from llmops.cli import to_plain
    from llmops.compiler.compile import compile_plan
    from llmops.config.hydra.compose import compose
    from llmops.config.validate import validate_and_resolve
    from llmops.core.context import StageContext
    from llmops.stages import data

    overrides = ["data=files", f"data.path={path}", f"data.num_proc={num_proc or 'null'}"]
    params = compile_plan(*validate_and_resolve(to_plain(compose(overrides)))).stage(
        "data").params
    out = Path(tempfile.mkdtemp(prefix="data_scale_stage_"))
    ctx = StageContext(run_dir=out, show_progress=False, logger=logging.getLogger("bench"))
    report = data.run(params, {"base": Path(tokenizer)} if tokenizer else {}, out, ctx)
    return {"rows": sum(report["counts"][k] for k in ("train", "val", "test")),
            "rejects": report["counts"]["rejected"], "reject_codes": report["rejects_by_code"],
            "lengths": report["token_lengths"]["method"]}


def run_arm(arm: str, path: str, num_proc: int | None, tokenizer: str | None = None) -> dict:
    """Runs one arm in this process; returns rows kept, rejects, seconds and peak memory."""
    import datasets

    datasets.disable_progress_bars()
    cache = tempfile.mkdtemp(prefix=f"data_scale_{arm}_")
    t0 = time.perf_counter()
    if arm == "stage":
        out = run_stage(path, num_proc, tokenizer)
        return {"arm": arm, **out, "seconds": round(time.perf_counter() - t0, 2),
                "cpu_seconds": round(_cpu_seconds(), 1), "peak_mb": round(_peak_mb())}
    if arm == "plain":
        rows = datasets.load_dataset("json", data_files=path, split="train", cache_dir=cache)
        n_rejects = 0
    else:
        from llmops.data.prepare import count_rejects, lint
        from llmops.data.readers import read_source

        rows, read_rejects = read_source(path, num_proc=num_proc, cache_dir=cache)
        rows, rejects = lint(rows, num_proc=num_proc)
        n_rejects = len(read_rejects) + len(rejects)
        by_code = count_rejects(rejects) if len(rejects) else {}
    parts = rows.train_test_split(test_size=0.1, seed=0)
    seconds = time.perf_counter() - t0
    out = {"arm": arm, "rows": len(parts["train"]) + len(parts["test"]), "rejects": n_rejects,
           "seconds": round(seconds, 2), "cpu_seconds": round(_cpu_seconds(), 1),
           "peak_mb": round(_peak_mb())}
    if arm == "llmops":
        out["reject_codes"] = by_code
    return out


def main() -> None:
    """Generates the data, runs both arms in fresh processes, and prints the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--num-proc", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workdir", default=None, help="where to write the JSONL (temp dir)")
    parser.add_argument("--tokenizer", default=None, help="model folder whose tokenizer measures")
    parser.add_argument("--arm", choices=("llmops", "plain", "stage"), help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(run_arm(args.arm, args.file, args.num_proc, args.tokenizer)))
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="data_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"chat_{args.rows}.jsonl"
    t0 = time.perf_counter()
    generate(path, args.rows)
    print(f"generated {args.rows} rows ({path.stat().st_size / 2**20:.0f} MiB) in "
          f"{time.perf_counter() - t0:.1f} s: {path}")
    results = {}
    load_before = os.getloadavg()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1"}
    for arm in ("plain", "llmops", "stage"):
        cmd = [sys.executable, __file__, "--arm", arm, "--file", str(path),
               "--num-proc", str(args.num_proc),
               *(["--tokenizer", args.tokenizer] if args.tokenizer else [])]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            sys.exit(f"{arm} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        results[arm] = json.loads(done.stdout.strip().splitlines()[-1])
    load_after = os.getloadavg()
    print(f"{'arm':8} {'rows':>9} {'rejects':>8} {'seconds':>8} {'rows/s':>9} {'CPU s':>7} "
          f"{'peak MB':>8}")
    for arm, r in results.items():
        print(f"{arm:8} {r['rows']:>9} {r['rejects']:>8} {r['seconds']:>8} "
              f"{r['rows'] / r['seconds']:>9.0f} {r['cpu_seconds']:>7} {r['peak_mb']:>8}")
    ratio = results["llmops"]["seconds"] / results["plain"]["seconds"]
    stage = results["stage"]["seconds"] / results["plain"]["seconds"]
    print(f"llmops / plain time: {ratio:.1f}x; stage / plain: {stage:.1f}x (lengths "
          f"{results['stage']['lengths']}); rejects by code: "
          f"{results['llmops']['reject_codes']}; num_proc={args.num_proc}")
    target = _target(args.rows, results["stage"])
    print(f"load average (1 min) before {load_before[0]:.1f}, after {load_after[0]:.1f} on "
          f"{os.cpu_count()} cores")
    print(target["line"])
    (work / "data_scale.json").write_text(json.dumps({"rows": args.rows, **results,
                                                      "ratio": ratio, "stage_ratio": stage,
                                                      "load_before": load_before,
                                                      "load_after": load_after,
                                                      "target": target}, indent=2))


def _target(rows: int, stage: dict) -> dict:
    """Says whether the stage arm met the target (at its pace below 1M rows)."""
    budget = TARGET_SECONDS * max(rows, 1) / TARGET_ROWS
    met = stage["seconds"] < budget and stage["peak_mb"] < TARGET_MB
    scope = "" if rows >= TARGET_ROWS else f" (the same pace at {rows} rows: < {budget:.0f} s)"
    line = (f"target: {TARGET_ROWS} chat rows by the data stage in < {TARGET_SECONDS:.0f} s on 2 "
            f"cores, peak < {TARGET_MB} MB{scope}: stage {stage['seconds']} s, "
            f"{stage['peak_mb']} MB -> {'met' if met else 'NOT met'}")
    return {"rows": rows, "seconds_budget": round(budget, 1), "mb_budget": TARGET_MB,
            "met": met, "line": line}


if __name__ == "__main__":
    main()
