"""The runner: store reuse, atomic publish, failures that leave nothing trusted, concurrency.

Uses the real data stage (pure Python, fast) as the workload. The first test runs it in the job's
stage process, as `python -m llmops` does; the others run it in the runner's own process
(`stage_process=False`): what they check (lookup, locks, checks, publish, move aside) is the
runner's, and a stage process would only add its ~4 CPU-s of imports to each run.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import subprocess
import sys
from pathlib import Path

import pytest

from llmops.errors import StageError

DATA_ONLY = ["model=qwen0.5b", "train=none", "eval=none", "deploy=none", "usecase=none"]


def _plan(compose_plan, store: Path, *extra: str):
    _, plan = compose_plan([*DATA_ONLY, f"store_dir={store}", *extra])
    assert [s.name for s in plan.stages] == ["data"]
    return plan


#: The second run, in a fresh process: what it imported to serve the stage from the store.
_CACHED_RUN = """
import json, sys
from llmops.core.plan import Plan
from llmops.runner.run import run_plan
manifest = run_plan(Plan.read(sys.argv[1]), sys.argv[2])
print(json.dumps({"manifest": manifest, "imported": [m for m in ("llmops.stages.data", "numpy")
                                                     if m in sys.modules]}))
"""


def _run(plan, run_dir: Path) -> dict:
    """run_plan with the stage in this process; returns the manifest."""
    from llmops.runner.run import run_plan

    return run_plan(plan, run_dir, stage_process=False)


def test_second_run_reuses_the_store_entry(compose_plan, tmp_path):
    """The second run serves the stage from the store without importing its code (the stage
    table says whether it may: `always_run`), so a cached stage costs the runner no imports."""
    from llmops.runner.run import run_plan

    plan = _plan(compose_plan, tmp_path / "store")
    first = run_plan(plan, tmp_path / "run1")
    rerun = subprocess.run([sys.executable, "-c", _CACHED_RUN, str(tmp_path / "run1" / "plan.json"),
                            str(tmp_path / "run2")], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    out = json.loads(rerun.stdout.strip().splitlines()[-1])
    second = out["manifest"]
    assert out["imported"] == []
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


def test_the_stage_table_says_which_stages_resume_and_which_always_run():
    """The runner reads these from the stage table, not from the stage's module: every training
    stage resumes from its checkpoint; deploy, monitor and release never come from the store;
    sft keeps the OpenAI backend's job file (its name is the backend's) in its work folder."""
    from llmops.backends.openai_ft import JOB_FILE
    from llmops.core.plan import STAGE_KINDS, TRAINING_STAGES, stage_kind

    assert {k.kind for k in STAGE_KINDS if k.resumable} == set(TRAINING_STAGES)
    assert {k.kind for k in STAGE_KINDS if k.always_run} == {"deploy", "monitor", "release"}
    assert stage_kind("sft").work_keeps == (JOB_FILE,)
    assert {k.kind for k in STAGE_KINDS if k.work_keeps} == {"sft"}


def test_failed_stage_publishes_nothing_and_says_so(compose_plan, tmp_path):

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": "not a list"}\n{"oops": 1}\n')
    plan = _plan(compose_plan, tmp_path / "store", "data=jsonl", f"data.path={bad}")
    with pytest.raises(StageError):
        _run(plan, tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["failed_stage"] == "data"
    assert manifest["stages"]["data"]["status"] == "failed"
    assert not (tmp_path / "store" / "data").exists()
    assert list((tmp_path / "store" / ".tmp").iterdir()) == []


def _run_in_process(plan_dict: dict, run_dirs: list[str], queue, start, between) -> None:
    """One job process: runs the plan once per run folder; before each run it waits until every
    job is up (`start`: they all ask for the entry at once), and between two runs until the test
    says go on (`between`)."""
    from llmops.core.plan import Plan
    from llmops.runner.run import run_plan

    plan = Plan.from_dict(plan_dict)
    for n, run_dir in enumerate(run_dirs):
        if n:
            between.wait(120)
        start.wait(120)
        manifest = run_plan(plan, Path(run_dir), stage_process=False)
        queue.put(manifest["stages"]["data"]["status"])


def _concurrent_jobs(plan, tmp_path: Path, jobs: int, rounds: int):
    """Starts `jobs` processes; yields, for each of `rounds` rounds, the sorted data statuses of
    the plan run in each process at once (all started together once all are up). The test does
    what it must between two rounds before asking for the next. The job that takes the lock first
    imports the data stage's libraries and writes the rows under it, seconds in which the others
    wait on the lock."""
    ctx = mp.get_context("spawn")
    queue, start, between = ctx.Queue(), ctx.Barrier(jobs), ctx.Event()
    procs = [ctx.Process(target=_run_in_process, args=(
        plan.to_dict(), [str(tmp_path / f"run{i}-{n}") for n in range(rounds)], queue, start,
        between)) for i in range(jobs)]
    for p in procs:
        p.start()
    try:
        for n in range(rounds):
            if n:
                between.set()
            yield sorted(queue.get(timeout=240) for _ in procs)
    finally:
        for p in procs:
            p.join(120)
            if p.exitcode is None:
                p.kill()
    assert [p.exitcode for p in procs] == [0] * jobs


def _damage(entry: Path, how: str) -> None:
    """Damages a real published data entry the way disks and people do."""
    if how == "truncate":  # the first 5 rows survive
        rows = (entry / "train.jsonl").read_text().splitlines()
        (entry / "train.jsonl").write_text("\n".join(rows[:5]) + "\n")
    elif how == "delete":
        (entry / "test.jsonl").unlink()
    elif how == "meta":
        (entry / "_stage.json").write_text('{"kind": "da')


@pytest.mark.parametrize("how, problem", [
    ("truncate", "train.jsonl: size "), ("delete", "test.jsonl: missing"),
    ("meta", "_stage.json: unreadable"),
])
def test_damaged_entry_is_moved_aside_and_rebuilt(compose_plan, tmp_path, caplog, how, problem):

    plan = _plan(compose_plan, tmp_path / "store")
    first = _run(plan, tmp_path / "run1")
    entry = Path(first["stages"]["data"]["path"])
    n_rows = len((entry / "train.jsonl").read_text().splitlines())
    _damage(entry, how)
    with caplog.at_level(logging.WARNING, logger="llmops"):
        second = _run(plan, tmp_path / "run2")
    data = second["stages"]["data"]
    assert data["status"] == "ran" and problem in data["rebuilt"]
    assert f"store entry {entry} is damaged ({problem}" in caplog.text
    aside = Path(data["moved_aside"])
    assert aside.parent == tmp_path / "store" / ".corrupt" and aside.name.startswith("data-")
    assert (aside / "_moved_aside.json").is_file(), "kept for inspection, with the reason"
    assert len((entry / "train.jsonl").read_text().splitlines()) == n_rows
    assert _run(plan, tmp_path / "run3")["stages"]["data"]["status"] == "cached"


def test_full_verify_catches_a_same_size_change_the_size_check_lets_through(compose_plan,
                                                                            tmp_path):

    plan = _plan(compose_plan, tmp_path / "store")
    entry = Path(_run(plan, tmp_path / "run1")["stages"]["data"]["path"])
    text = (entry / "val.jsonl").read_text()
    (entry / "val.jsonl").write_text(text.replace('"user"', '"usex"', 1))
    assert _run(plan, tmp_path / "run2")["stages"]["data"]["status"] == "cached"
    full = _plan(compose_plan, tmp_path / "store", "store.verify=full")
    assert full.run["store_verify"] == "full"
    data = _run(full, tmp_path / "run3")["stages"]["data"]
    assert data["status"] == "ran"
    assert "val.jsonl: content hash differs from the one recorded at publish" in data["rebuilt"]


def test_entry_published_without_hashes_is_used_with_a_warning(compose_plan, tmp_path, caplog):

    plan = _plan(compose_plan, tmp_path / "store")
    entry = Path(_run(plan, tmp_path / "run1")["stages"]["data"]["path"])
    meta = json.loads((entry / "_stage.json").read_text())
    assert set(meta["files"]) == {"train.jsonl", "val.jsonl", "test.jsonl", "data_report.json"}
    del meta["files"], meta["hash"]  # what llmops wrote before it recorded hashes
    (entry / "_stage.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="llmops"):
        second = _run(plan, tmp_path / "run2")
    assert second["stages"]["data"]["status"] == "cached"
    assert f"store entry {entry} has no content hashes" in caplog.text


def test_concurrent_jobs_do_the_work_once_and_move_a_damaged_entry_aside_once(compose_plan,
                                                                              tmp_path):
    """Three jobs at once on an empty store: one runs, two wait and take its entry. Three more at
    once after the entry is damaged: one moves it aside and rebuilds it, two take the rebuild."""
    plan = _plan(compose_plan, tmp_path / "store", "data.n_examples=4000")
    rounds = _concurrent_jobs(plan, tmp_path, jobs=3, rounds=2)  # the same three processes
    assert next(rounds) == ["cached", "cached", "ran"]
    entries = list((tmp_path / "store" / "data").iterdir())
    assert len(entries) == 1
    assert (entries[0] / "_stage.json").is_file()
    _damage(entries[0], "truncate")
    assert next(rounds) == ["cached", "cached", "ran"]
    assert next(rounds, None) is None  # the processes ended well
    assert len(list((tmp_path / "store" / ".corrupt").iterdir())) == 1


def test_jobs_of_a_sweep_share_a_stage_process_only_where_it_would_start_the_same(monkeypatch):
    """Inside shared_stage_process (the CLI around the jobs Hydra runs in its process) a job takes
    over the last job's stage process when it would start one with the same kept-out packages and
    environment; otherwise it gets its own and the last one ends. Outside, each job has its own.
    (The real takeover in a sweep: test_sweeps' rank_lr sweep.)"""
    from llmops.runner.shared import job_stage_process, shared_stage_process

    alone, shared = job_stage_process(("wandb",))
    assert not shared and job_stage_process(("wandb",))[0] is not alone
    with shared_stage_process():
        first, shared = job_stage_process(("wandb",))
        assert shared and job_stage_process(("wandb",)) == (first, True)
        closed = []
        monkeypatch.setattr(first, "close", lambda: closed.append(first))
        other, _ = job_stage_process(("bitsandbytes", "wandb"))
        assert other is not first and closed == [first]
        monkeypatch.setenv("LLMOPS_SHARED_TEST", "1")  # a job's hydra.job.env_set
        third, _ = job_stage_process(("bitsandbytes", "wandb"))
        assert third is not other
        monkeypatch.setattr(third, "close", lambda: closed.append(third))
    assert closed == [first, third]  # the block's end ends the kept one
    assert job_stage_process(("wandb",))[1] is False
