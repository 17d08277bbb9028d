"""Sweeps: named sweeps, pre-flight of every point, launchers, failing points, resume, store gc."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SWEEP_TINY as TINY  # one home: the rank_lr_sweep fixture's

from llmops.config.hydra.groups import group_options
from llmops.errors import ConfigError

DATA_ONLY = ["model=qwen0.5b", "train=none", "eval=none", "deploy=none", "usecase=none"]
SWEEPS = [s for s in group_options("sweeps") if s != "none"]
# What a sweep needs besides itself to compile on this CPU machine.
_NEEDS = {"base_models": ["dry_run=true", "hardware=a100_80g"]}


def llmops(*args: str, cwd: Path, module: str = "llmops", timeout: int = 300,
           ) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LLMOPS_STORE"}
    env.update(WANDB_MODE="disabled", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _jobs(tmp_path: Path, pattern: str = "outputs/multirun/*/*/*/manifest.json") -> list[dict]:
    """Returns each job's manifest (with its sweep_job.json as 'job'), in job order."""
    out = []
    for m in sorted(glob.glob(str(tmp_path / pattern))):
        manifest = json.loads(Path(m).read_text())
        manifest["job"] = json.loads((Path(m).parent / "sweep_job.json").read_text())
        out.append(manifest)
    return sorted(out, key=lambda m: m["job_num"])


def _statuses(jobs: list[dict], stage: str) -> list[str]:
    return sorted(j["stages"][stage]["status"] for j in jobs)


def _seed(tmp_path: Path, seed_store, rank_lr_sweep, *stages: str) -> None:
    """Copies these stages' entries of a TINY plan from the rank_lr sweep's store (the same base,
    data and base evaluation: none of them depends on what a sweep here varies) into the store
    `python -m llmops` uses in tmp_path, so that only the stages under test run there."""
    seed_store(tmp_path / "outputs" / "store", *TINY, stages=stages,
               source=rank_lr_sweep["root"] / "outputs" / "store")


@pytest.mark.parametrize("name", SWEEPS)
def test_every_named_sweep_is_a_multirun_whose_points_all_compile(name, compose_plan):
    from llmops.cli import preflight
    from llmops.config.hydra.compose import compose

    cfg = compose([f"sweeps={name}"], return_hydra_config=True)
    assert str(cfg.hydra.mode).endswith("MULTIRUN")
    assert cfg.hydra.sweeper.params
    sweep = preflight([f"sweeps={name}", *_NEEDS.get(name, [])])
    assert sweep is not None and not sweep.invalid
    assert len(sweep.points) == {"rank_lr": 4, "base_models": 3, "optuna_rank_lr": 6,
                                 "methods": 3}[name]
    if name == "methods":  # the points share every stage before the method's own
        plans = [compose_plan(point)[1] for point in sweep.points]
        kinds = [{s.kind for s in p.stages} & {"dpo", "grpo"} for p in plans]
        assert kinds == [set(), {"dpo"}, {"grpo"}]
        for shared in ("base", "data", "eval_base", "sft"):
            assert len({p.stage(shared).fingerprint for p in plans}) == 1


def test_optuna_sweep_maximises_and_keeps_the_study_in_memory():
    from llmops.config.hydra.compose import compose

    sweeper = compose(["sweeps=optuna_rank_lr"], return_hydra_config=True).hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.direction == "maximize" and sweeper.storage is None
    assert sweeper.max_failure_rate == 1.0


def test_sweep_points_command_line_wins_and_intervals_are_checked_at_both_ends():
    from llmops.cli.sweep import expand_points, plan_sweep

    sweep = plan_sweep(["sweeps=rank_lr", "lora=r32,r64"], False)
    assert sweep is not None
    assert {p[0] for p in sweep.points} == {"lora=r32", "lora=r64"} and len(sweep.points) == 4
    points = expand_points(["train.learning_rate=tag(log, interval(1e-3, 1e-2))"])
    assert points == [["train.learning_rate=0.001"], ["train.learning_rate=0.01"]]
    assert plan_sweep(["lora=r8"], False) is None


def test_a_swept_value_without_multirun_says_add_m():
    from llmops.cli import preflight

    with pytest.raises(ConfigError) as err:
        preflight(["lora=r8,r16"])
    assert err.value.problems[0].key == "lora"
    assert "add -m to run every point" in err.value.problems[0].message


def test_invalid_points_refuse_the_sweep_unless_skip_invalid(capsys):
    from llmops.cli import preflight

    argv = ["-m", "train.learning_rate=2e-3,-1"]
    with pytest.raises(ConfigError) as err:
        preflight(argv)
    assert [p.key for p in err.value.problems] == ["train.learning_rate"]
    assert "[sweep point: train.learning_rate=-1]" in err.value.problems[0].message
    sweep = preflight([*argv, "skip_invalid=true"])
    assert sweep.invalid == ["train.learning_rate=-1"]
    assert "1 of 2 sweep points are invalid and will be skipped" in capsys.readouterr().err
    with pytest.raises(ConfigError):  # nothing valid left to launch
        preflight(["-m", "train.learning_rate=-2,-1", "skip_invalid=true"])
    with pytest.raises(ConfigError) as err:  # a point Hydra cannot compose is never skipped
        preflight(["-m", "lora=r8,r17", "skip_invalid=true"])
    assert err.value.problems[0].key == "lora"


def test_skip_invalid_launches_the_valid_points_and_exits_0(tmp_path):
    r = llmops("-m", *DATA_ONLY, "data.n_examples=100", "data.test_fraction=0.1,0.95",
               "skip_invalid=true", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "1 of 2 sweep points are invalid and will be skipped" in r.stderr
    assert "1 of 2 points succeeded, 1 skipped as invalid" in r.stdout
    job = json.loads(next((tmp_path / "outputs/multirun").glob("*/*/1/sweep_job.json")).read_text())
    assert job["status"] == "invalid" and job["error"].startswith("data.val_fraction: ")


def test_failing_point_does_not_stop_the_sweep_under_submitit(tmp_path):
    from llmops.data import samples_dir

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": "not a list"}\n{"oops": 1}\n')
    good = samples_dir() / "tasks_chat.jsonl"
    r = llmops("-m", "hydra/launcher=submitit_local", *DATA_ONLY, "data=jsonl",
               f"data.path={good},{bad}", cwd=tmp_path)
    assert r.returncode == 1, r.stderr[-2000:]
    jobs = _jobs(tmp_path)
    assert [j["job"]["status"] for j in jobs] == ["succeeded", "failed"]
    assert [j["status"] for j in jobs] == ["succeeded", "failed"]
    assert "sweep finished: 1 of 2 points succeeded" in r.stderr
    assert f"job 1 [data.path={bad}]: failed: data:" in r.stderr
    assert len({j["sweep"] for j in jobs}) == 1 and jobs[0]["sweep_dir"].endswith(jobs[0]["sweep"])


@pytest.mark.slow
def test_named_sweep_runs_without_m_and_prepares_shared_stages_once(rank_lr_sweep):
    r = rank_lr_sweep["result"]  # conftest: sweeps=rank_lr lora=r8 on TINY, eval.enforce=false
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = _jobs(rank_lr_sweep["sweep"], "*/manifest.json")
    assert len(jobs) == 2
    for stage in ("base", "data", "eval_base"):
        assert _statuses(jobs, stage) == ["cached", "ran"], stage
    assert _statuses(jobs, "sft") == ["ran", "ran"]
    assert len({j["stages"]["sft"]["fingerprint"] for j in jobs}) == 2
    assert {j["stages"]["data"]["path"] for j in jobs} == {jobs[0]["stages"]["data"]["path"]}
    assert {j["sweep"] for j in jobs} == {jobs[0]["sweep"]}
    assert [j["job_num"] for j in jobs] == [0, 1]
    assert all(j["job"]["status"] == "succeeded" for j in jobs)
    assert all(isinstance(j["job"]["metric"], float) for j in jobs)
    assert "sweep finished: 2 of 2 points succeeded" in r.stdout
    # Both jobs ran in this process, one after the other: the second took over the first's stage
    # process (llmops.runner.shared) instead of starting its own.
    assert r.stdout.count("stage process: the last job's (pid") == 1
    assert "goes on with this job" in (rank_lr_sweep["sweep"] / "1" / "llmops.log").read_text()


@pytest.mark.slow
def test_optuna_sweep_runs_by_name_and_reports_the_best_point(tmp_path, seed_store,
                                                               rank_lr_sweep):
    # The trials train and evaluate; what they share comes from the store (seeded: the rank_lr
    # sweep checks a sweep prepares it once).
    _seed(tmp_path, seed_store, rank_lr_sweep, "base", "data", "eval_base")
    r = llmops("sweeps=optuna_rank_lr", "hydra.sweeper.n_trials=2", *TINY, "eval.enforce=false",
               cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = _jobs(tmp_path)
    assert len(jobs) == 2 and _statuses(jobs, "sft") == ["ran", "ran"]
    for stage in ("base", "data", "eval_base"):
        assert _statuses(jobs, stage) == ["cached", "cached"], stage
    # The sweeper runs its trials in this process: the second takes over the first's stage process.
    assert r.stdout.count("stage process: the last job's (pid") == 1
    lrs = [float(j["config"]["train"]["learning_rate"]) for j in jobs]
    assert all(1e-3 <= lr <= 1e-2 for lr in lrs)
    results = next((tmp_path / "outputs/multirun").glob("*/*/optimization_results.yaml"))
    text = results.read_text()
    assert "best_params:" in text and "best_value:" in text
    assert max(j["job"]["metric"] for j in jobs) == pytest.approx(
        float(text.split("best_value:")[1].split()[0]))


@pytest.mark.slow
def test_joblib_points_share_the_store_and_a_gate_failure_exits_3_at_the_end(
        tmp_path, seed_store, rank_lr_sweep):
    _seed(tmp_path, seed_store, rank_lr_sweep, "base")  # the jobs start at the data stage
    r = llmops("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY,
               "eval.enforce=true,false", cwd=tmp_path)
    assert r.returncode == 3, r.stderr[-3000:]
    jobs = _jobs(tmp_path)
    assert [j["job"]["status"] for j in jobs] == ["gate_failed", "succeeded"]
    assert jobs[0]["stages"]["export"]["status"] == "skipped"
    assert jobs[1]["stages"]["export"]["status"] == "ran"
    # The two jobs ran at once; everything but the gated eval is the same work, done once.
    assert _statuses(jobs, "base") == ["cached", "cached"]
    for stage in ("data", "sft", "eval_base"):
        assert _statuses(jobs, stage) == ["cached", "ran"], stage
    # Each job ran in its own joblib worker process, with a stage process of its own.
    assert "stage process: the last job's" not in r.stdout + r.stderr
    store = tmp_path / "outputs" / "store"
    assert list((store / ".tmp").iterdir()) == [] and list((store / ".work").iterdir()) == []
    assert "job 0 [eval.enforce=True]: gate_failed" in r.stderr


TRAIN_ONLY = ["data.n_examples=200", "model.pretrain.steps=20", "eval=none", "deploy=none",
              "usecase=none", "progress=false"]
CHECKPOINT = "outputs/store/.work/sft-*/checkpoints/checkpoint-*/trainer_state.json"


def _steps(tmp_path: Path) -> list[int]:
    """Returns the steps of the sft checkpoints under tmp_path's store."""
    return [int(Path(p).parent.name.rsplit("-", 1)[1])
            for p in glob.glob(str(tmp_path / CHECKPOINT))]


def _start_until_checkpoint(tmp_path: Path, args: list[str], newer_than: int = 0
                            ) -> subprocess.Popen:
    """Starts `python -m llmops ARGS` (own process group) and returns once sft has a checkpoint
    past step `newer_than`."""
    env = {k: v for k, v in os.environ.items() if k != "LLMOPS_STORE"}
    env.update(WANDB_MODE="disabled", HF_HUB_OFFLINE="1")
    with open(tmp_path / "stdout.txt", "w") as out, open(tmp_path / "stderr.txt", "w") as err:
        # Files, not pipes: a full pipe would stall the run before its first checkpoint.
        proc = subprocess.Popen([sys.executable, "-m", "llmops", *args], cwd=tmp_path, env=env,
                                stdout=out, stderr=err, start_new_session=True)
    deadline = time.time() + 240
    while max(_steps(tmp_path), default=0) <= newer_than and proc.poll() is None \
            and time.time() < deadline:
        time.sleep(0.1)
    if max(_steps(tmp_path), default=0) <= newer_than:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"no checkpoint appeared before the run ended:\n{_stderr(tmp_path)[-2000:]}")
    return proc


def _stderr(tmp_path: Path) -> str:
    return (tmp_path / "stderr.txt").read_text()


# A job killed in sft and its rerun resuming from the last checkpoint: tests/store/
# test_store_integrity.py's truncated-checkpoint test kills one job and reruns it, and checks
# both (nothing published, data cached, resumed, steps, .work emptied).


@pytest.mark.slow
def test_preempted_submitit_job_is_requeued_and_resumes_from_its_checkpoint(
        tmp_path, seed_store, rank_lr_sweep):
    """What SLURM does to a point at its time limit, through submitit's local executor.

    submitit signals the job (SIGUSR2); the launcher checkpoints the job, submitit requeues it
    (here: restarts it locally, on SLURM: scontrol requeue) and the rerun resumes training.
    """
    import psutil

    _seed(tmp_path, seed_store, rank_lr_sweep, "base", "data")  # the job starts at sft

    proc = _start_until_checkpoint(tmp_path, ["-m", "hydra/launcher=submitit_local",
                                              "train.max_steps=25", "train.save_steps=5",
                                              *TRAIN_ONLY])
    tasks = [p for p in psutil.process_iter(["cmdline"])
             if "submitit.core._submit" in " ".join(p.info["cmdline"] or [])
             and str(tmp_path) in " ".join(p.info["cmdline"] or [])]
    assert len(tasks) == 1, tasks
    tasks[0].send_signal(signal.SIGUSR2)  # submitit's timeout / preemption signal
    try:
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, _stderr(tmp_path)[-3000:]
    logs = "\n".join(Path(f).read_text() for f in
                     glob.glob(str(tmp_path / "outputs/multirun/*/*/.submitit/*/*_log.*")))
    assert "this job is preempted" in logs and "Requeued job" in logs
    (job,) = _jobs(tmp_path)
    assert job["stages"]["data"]["status"] == "cached"  # seeded
    sft = job["stages"]["sft"]
    assert sft["status"] == "resumed" and sft["resumed_from_step"] >= 5
    assert job["job"]["status"] == "succeeded"
    report = json.loads((Path(sft["path"]) / "training_report.json").read_text())
    assert report["steps"] == 25 and report["resumed_from_step"] == sft["resumed_from_step"]


def _data_run(compose_plan, store: Path, run_dir: Path, n: int) -> dict:
    """Runs a data-only plan with its stage in this process (what is checked is the store's)."""
    from llmops.runner.run import run_plan

    _, plan = compose_plan([*DATA_ONLY, f"store_dir={store}", f"data.n_examples={n}"])
    return run_plan(plan, run_dir, stage_process=False)


def test_store_list_and_gc(compose_plan, tmp_path, capsys):
    import shutil

    from llmops.store.cas import Store
    from llmops.store.command import main as store_main

    store = tmp_path / "store"
    keep = _data_run(compose_plan, store, tmp_path / "runs" / "keep", 100)
    drop = _data_run(compose_plan, store, tmp_path / "runs" / "drop", 200)
    shutil.rmtree(tmp_path / "runs" / "drop")
    stale = store / ".tmp" / f"data-{'a' * 24}-1-deadbeef"
    busy = store / ".work" / f"sft-{'b' * 24}"
    stale.mkdir(parents=True)
    busy.mkdir(parents=True)
    lock = Store(store).lock_for("b" * 24)
    lock.acquire()
    try:
        assert store_main(["list", "--store", str(store)]) == 0
        out = capsys.readouterr().out
        assert "referenced" in out and "run folder missing" in out and "in use" in out
        assert "stale" in out and "runs/keep" in out
        # The deleted run's entry goes only with --force (gc cannot tell deleted from moved).
        force = ["--older-than", "0", "--force"]
        assert store_main(["gc", "--store", str(store), "--dry-run", *force]) == 0
        assert "gc would remove 2 folders" in capsys.readouterr().out
        assert stale.exists() and Path(drop["stages"]["data"]["path"]).exists()
        assert store_main(["gc", "--store", str(store), *force]) == 0
        assert "gc removed 2 folders" in capsys.readouterr().out
    finally:
        lock.release()
    assert not stale.exists() and busy.exists()
    assert not Path(drop["stages"]["data"]["path"]).exists()
    assert Path(keep["stages"]["data"]["path"]).exists()
    r = llmops("list", "--store", str(store), module="llmops.store", cwd=tmp_path)
    assert r.returncode == 0 and "referenced" in r.stdout and "data" in r.stdout
