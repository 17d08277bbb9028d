"""The runner: store reuse, atomic publish, failures that leave nothing trusted, concurrency.

Uses the real data stage (pure Python, fast) as the workload.
"""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest

from llmops.errors import StageError

DATA_ONLY = ["model=qwen0.5b", "train=none", "eval=none", "deploy=none", "usecase=none"]


def _plan(compose_plan, store: Path, *extra: str):
    _, plan = compose_plan([*DATA_ONLY, f"store_dir={store}", *extra])
    assert [s.name for s in plan.stages] == ["data"]
    return plan


def test_second_run_reuses_the_store_entry(compose_plan, tmp_path):
    from llmops.runner.run import run_plan

    plan = _plan(compose_plan, tmp_path / "store")
    first = run_plan(plan, tmp_path / "run1")
    second = run_plan(plan, tmp_path / "run2")
    assert first["stages"]["data"]["status"] == "ran"
    assert second["stages"]["data"]["status"] == "cached"
    assert first["stages"]["data"]["path"] == second["stages"]["data"]["path"]
    for run in ("run1", "run2"):
        folder = tmp_path / run
        assert (folder / "plan.json").is_file() and (folder / "data_report.json").is_file()
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["status"] == "succeeded"
        assert set(manifest["data_hashes"]) == {"train.jsonl", "val.jsonl", "test.jsonl"}
        assert manifest["libraries"]["hydra-core"]
        assert (folder / "stages" / "data" / "train.jsonl").is_file()


def test_failed_stage_publishes_nothing_and_says_so(compose_plan, tmp_path):
    from llmops.runner.run import run_plan

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": "not a list"}\n{"oops": 1}\n')
    plan = _plan(compose_plan, tmp_path / "store", "data=jsonl", f"data.path={bad}")
    with pytest.raises(StageError):
        run_plan(plan, tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["failed_stage"] == "data"
    assert manifest["stages"]["data"]["status"] == "failed"
    assert not (tmp_path / "store" / "data").exists()
    assert list((tmp_path / "store" / ".tmp").iterdir()) == []


def _run_in_process(plan_dict: dict, run_dir: str, queue) -> None:
    from llmops.compiler.plan import Plan
    from llmops.runner.run import run_plan

    manifest = run_plan(Plan.from_dict(plan_dict), Path(run_dir))
    queue.put(manifest["stages"]["data"]["status"])


def test_concurrent_jobs_do_the_work_once(compose_plan, tmp_path):
    plan = _plan(compose_plan, tmp_path / "store", "data.n_examples=20000")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_run_in_process,
                         args=(plan.to_dict(), str(tmp_path / f"run{i}"), queue))
             for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    statuses = sorted(queue.get(timeout=5) for _ in procs)
    assert statuses == ["cached", "cached", "ran"]
    entries = list((tmp_path / "store" / "data").iterdir())
    assert len(entries) == 1
    assert (entries[0] / "_stage.json").is_file()
