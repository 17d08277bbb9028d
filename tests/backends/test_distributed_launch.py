"""One training job over several processes: torchrun / accelerate launch on gloo (CPU), rank 0
writes, stops and kills leave no rank behind, a rerun resumes, and submitit tasks as ranks."""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import QUICK_PRETRAIN

from llmops.errors import StageError

DDP2 = ("distributed=ddp", "distributed.nproc_per_node=2")
TRAIN_ONLY = ["data.n_examples=200", "model.pretrain.steps=20", "eval=none", "deploy=none",
              "usecase=none", "progress=false"]
CHECKPOINT = "outputs/store/.work/sft-*/checkpoints/checkpoint-*/trainer_state.json"
RANK_MARKERS = ("llmops.runner.rank", "torch.distributed.run")
# What the stage process keeps out (llmops.runner.supervise.unused_packages), the ranks too.
KEPT_OUT = ("bitsandbytes", "wandb")


def _ctx(tmp_path: Path):
    from llmops.core.context import StageContext

    return StageContext(run_dir=tmp_path, show_progress=False, logger=logging.getLogger("test"))


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LLMOPS_STORE"}
    env.update(WANDB_MODE="disabled", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               OMP_NUM_THREADS="1")
    return env


def _ranks_left(tmp_path: Path) -> list[str]:
    """Returns the command lines of launchers or ranks still running on this test's files."""
    import psutil

    left = []
    for p in psutil.process_iter(["cmdline"]):
        line = " ".join(p.info["cmdline"] or [])
        if str(tmp_path) in line and any(m in line for m in RANK_MARKERS):
            left.append(line)
    return left


def _imported(profile: str) -> set[str]:
    """The modules a `PYTHONPROFILEIMPORTTIME=1` output names (each import that was tried)."""
    return set(re.findall(r"^import time:.*\|\s*([\w.]+)\s*$", profile, re.M))


def _assert_kept_out(profile: str) -> None:
    """The training processes of this output imported peft and TRL but loaded none of KEPT_OUT
    (peft imports bitsandbytes, TRL wandb, whenever they are installed). A kept-out package's
    import is tried (its line) but fails at once; a loaded one imports its submodules."""
    imported = _imported(profile)
    assert {"peft", "trl"} <= {m.split(".")[0] for m in imported}, "no rank's imports are here"
    assert not {m for m in imported if "." in m and m.split(".")[0] in KEPT_OUT}


def _wait_no_ranks(tmp_path: Path, seconds: float = 20) -> list[str]:
    deadline = time.time() + seconds
    while _ranks_left(tmp_path) and time.time() < deadline:
        time.sleep(0.2)
    return _ranks_left(tmp_path)


def test_two_process_dpo_continues_the_sft_adapter_and_rank_0_scores_held_out_pairs(
        tiny_base, sft_data, tmp_path, stage_params, monkeypatch, capsys):
    """Also: the ranks keep out what the stage process does (their imports, profiled, reach
    this process's stderr through the launcher's relay)."""
    from llmops.data import preferences
    from llmops.files import write_jsonl
    from llmops.stages import dpo, sft

    data = tmp_path / "data"
    data.mkdir()
    rows = [json.loads(line) for line in (sft_data / "train.jsonl").read_text().splitlines()]
    write_jsonl(data / "train.jsonl", rows[:64])
    pairs = preferences.derive(rows[:72], 1)[0]
    write_jsonl(data / "pref_train.jsonl", pairs[:-8])
    write_jsonl(data / "pref_test.jsonl", pairs[-8:])
    short = ("train=sft_dpo", "train.max_steps=2", "train.dpo.max_steps=2",
             "train.dpo.batch_size=4")
    sft.run(stage_params("sft", *short), {"data": data, "base": tiny_base}, tmp_path / "sft",
            _ctx(tmp_path))
    out = tmp_path / "dpo"
    out.mkdir()
    capsys.readouterr()
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")  # the launched processes' imports
    report = dpo.run(stage_params("dpo", *short, *DDP2), {"data": data, "sft": tmp_path / "sft",
                                                         "base": tiny_base}, out, _ctx(tmp_path))
    assert report["world_size"] == 2 and report["steps"] == 2
    assert report["held_out"]["start"] == "sft" and report["held_out"]["dpo"]["n"] == 8
    assert json.loads((out / "dpo_report.json").read_text()) == report
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    _assert_kept_out(capsys.readouterr().err)


def test_a_failing_rank_fails_the_stage_with_the_tail_of_its_output(
        tiny_base, sft_data, tmp_path, stage_params):
    from llmops.stages import sft

    data = tmp_path / "data"
    data.mkdir()
    first = (sft_data / "train.jsonl").read_text().splitlines()[0]
    (data / "train.jsonl").write_text(first + "\n{not json\n")
    out = tmp_path / "sft"
    out.mkdir()
    params = stage_params("sft", *DDP2, "train.max_steps=2")
    with pytest.raises(StageError) as err:
        sft.run(params, {"base": tiny_base, "data": data}, out, _ctx(tmp_path))
    message = str(err.value)
    assert message.startswith("sft: the 2-process training job failed (torchrun exit code 1)")
    assert f"invalid JSON at {data / 'train.jsonl'}:2" in message
    assert not (out / "training_report.json").exists()


def test_fsdp_on_a_cpu_is_refused_rather_than_trained_as_ddp(tiny_base, sft_data, tmp_path,
                                                             stage_params, compose_plan):
    """At compile time (exit 2), and by the stage too if its params say fsdp on a CPU anyway."""
    from llmops.errors import ConfigError
    from llmops.stages import sft

    with pytest.raises(ConfigError, match=r"'fsdp' shards over GPUs only: on a CPU accelerate "
                                          r"runs it as plain DDP"):
        compose_plan(["distributed=fsdp", "distributed.nproc_per_node=2", "hardware=cpu"])
    params = stage_params("sft", "distributed=ddp", "distributed.nproc_per_node=2")
    params["distributed"] = {**params["distributed"], "strategy": "fsdp"}
    with pytest.raises(StageError, match=r"distributed.strategy=fsdp shards over GPUs only: on a "
                                         r"CPU accelerate runs it as plain DDP"):
        sft.run(params, {"base": tiny_base, "data": sft_data}, tmp_path, _ctx(tmp_path))


def _start_until_checkpoint(tmp_path: Path, args: list[str], newer_than: int = 0
                            ) -> subprocess.Popen:
    """Starts `python -m llmops ARGS` (own session) and returns once sft has a checkpoint past
    step `newer_than`."""
    with open(tmp_path / "stdout.txt", "w") as out, open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "llmops", *args], cwd=tmp_path,
                                env=_env(), stdout=out, stderr=err, start_new_session=True)
    deadline = time.time() + 300
    while max(_steps(tmp_path), default=0) <= newer_than and proc.poll() is None \
            and time.time() < deadline:
        time.sleep(0.1)
    if max(_steps(tmp_path), default=0) <= newer_than:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail("no checkpoint appeared before the run ended:\n"
                    + (tmp_path / "stderr.txt").read_text()[-3000:])
    return proc


def _steps(tmp_path: Path) -> list[int]:
    return [int(Path(p).parent.name.split("-")[-1]) for p in glob.glob(str(tmp_path / CHECKPOINT))]


def _last_manifest(tmp_path: Path) -> dict:
    runs = sorted((tmp_path / "outputs/runs").glob("*/*/manifest.json"),
                  key=lambda p: p.stat().st_mtime)
    return json.loads(runs[-1].read_text())


def _seed_base_and_data(store: Path, args: list[str], tiny_base: Path, compose_plan,
                        stage_params) -> None:
    """Publishes the plan's base (the session's tiny base, built from the same params) and its
    data (built here by the data stage) in `store`, so that the jobs run only sft: their stage
    process then only launches the ranks and imports no torch."""
    from llmops.stages import data as data_stage
    from llmops.store.cas import Store

    _, plan = compose_plan(args)
    base, data = plan.stage("base"), plan.stage("data")
    assert base.params == stage_params("base", *QUICK_PRETRAIN), "tiny_base is this base"
    cas = Store(store)
    tmp = cas.new_tmp(base)
    shutil.copytree(tiny_base, tmp, dirs_exist_ok=True)
    base_entry = cas.publish(base, tmp, {"duration_s": 0.0})
    tmp = cas.new_tmp(data)
    data_stage.run(data.params, {"base": base_entry}, tmp, _ctx(tmp))
    cas.publish(data, tmp, {"duration_s": 0.0})


@pytest.mark.slow
def test_sigterm_and_kill_9_stop_every_rank_and_the_rerun_trains_one_sft_on_two_processes(
        tmp_path, compose_plan, stage_params, tiny_base):
    """One chain of two-process jobs (torchrun, two gloo ranks) on one store: SIGTERM to the
    runner stops the first and leaves no torchrun; kill -9 of the runner alone stops the second
    (torchrun and the ranks follow it) and publishes nothing; the rerun resumes from the newest
    checkpoint and trains one sft on two processes, rank 0 reporting the world."""
    max_steps = 30  # stops past steps 5 and 10: 20 steps of slack before the end
    args = [*DDP2, f"train.max_steps={max_steps}", "train.save_steps=5",
            "train.logging_steps=1", "data.n_examples=200", *QUICK_PRETRAIN, *TRAIN_ONLY[2:]]
    _seed_base_and_data(tmp_path / "outputs/store", args, tiny_base, compose_plan, stage_params)

    # SIGTERM to the runner only, as docker stop or a scheduler sends it.
    proc = _start_until_checkpoint(tmp_path, args)
    assert _ranks_left(tmp_path), "the ranks run under torchrun, as children of the runner"
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=90)
    finally:
        left = _wait_no_ranks(tmp_path, 5)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, (tmp_path / "stderr.txt").read_text()[-3000:]
    assert left == [], left
    manifest = _last_manifest(tmp_path)
    assert manifest["status"] == "interrupted" and manifest["stages"]["sft"]["status"] \
        == "interrupted"
    assert manifest["stages"]["base"]["status"] == manifest["stages"]["data"]["status"] \
        == "cached"
    first = max(_steps(tmp_path))

    # kill -9 of the runner alone (the second job resumed from the first's checkpoint): torchrun
    # and the ranks follow it.
    proc = _start_until_checkpoint(tmp_path, args, first)
    assert _ranks_left(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    left = _wait_no_ranks(tmp_path)
    with contextlib.suppress(ProcessLookupError):  # whatever is left of the job (nothing)
        os.killpg(proc.pid, signal.SIGKILL)
    assert left == [], left
    assert not (tmp_path / "outputs/store/sft").exists(), "a killed job publishes nothing"

    r = subprocess.run([sys.executable, "-m", "llmops", *args], cwd=tmp_path, env=_env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    sft = _last_manifest(tmp_path)["stages"]["sft"]
    assert sft["status"] == "resumed" and sft["resumed_from_step"] >= 5
    entry = Path(sft["path"])
    report = json.loads((entry / "training_report.json").read_text())
    assert report["world_size"] == 2 and report["launcher"] == "torchrun"
    assert report["strategy"] == "ddp" and report["steps"] == max_steps
    assert report["resumed_from_step"] == sft["resumed_from_step"]
    # Rank 0's progress lines reach the runner's logging, once each (rank 1 stays quiet).
    out = r.stdout + r.stderr
    start = sft["resumed_from_step"]
    steps = [line.split("sft: step ", 1)[1].split(" loss ")[0] for line in out.splitlines()
             if "sft: step " in line]
    assert steps == [f"{i}/{max_steps}" for i in range(start + 1, max_steps + 1)], out[-3000:]
    # The one-process plan's effective batch is kept: each rank takes its share.
    _, one = compose_plan([a for a in args if a not in DDP2])
    train = one.stage("sft").params["train"]
    assert report["effective_batch"] == train["batch_size"] * train["grad_accum"]
    assert report["per_rank_batch"] * report["grad_accum"] * 2 == report["effective_batch"]
    assert (entry / "adapter" / "adapter_model.safetensors").is_file()
    # Both ranks ran under torchrun: each saved its RNG state in the trainer's checkpoint.
    assert sorted(p.name for p in (entry / f"checkpoints/checkpoint-{max_steps}")
                  .glob("rng_state_*")) == ["rng_state_0.pth", "rng_state_1.pth"]
    command = (entry / "launch" / "command.txt").read_text()
    assert "-m torch.distributed.run --standalone --nproc_per_node=2" in command
    assert "-m llmops.runner.rank" in command
    assert _ranks_left(tmp_path) == []


@pytest.mark.slow
def test_two_submitit_tasks_train_as_two_ranks_and_task_0_reports(tmp_path, compose_plan,
                                                                  stage_params, tiny_base):
    """Both tasks keep out what a stage process does: task 0, which runs the stages itself, and
    task 1, which trains what task 0 hands it (their imports profiled into their logs)."""
    args = [*DDP2, "train.max_steps=6", "data.n_examples=200", *QUICK_PRETRAIN, *TRAIN_ONLY[2:]]
    _seed_base_and_data(tmp_path / "outputs/store", args, tiny_base, compose_plan, stage_params)
    r = subprocess.run(
        [sys.executable, "-m", "llmops", "-m", "hydra/launcher=submitit_local",
         "hydra.launcher.tasks_per_node=2", *args],
        cwd=tmp_path, env={**_env(), "PYTHONPROFILEIMPORTTIME": "1"}, capture_output=True,
        text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (manifest_path,) = glob.glob(str(tmp_path / "outputs/multirun/*/*/0/manifest.json"))
    manifest = json.loads(Path(manifest_path).read_text())
    assert manifest["status"] == "succeeded" and manifest["stages"]["base"]["status"] == "cached"
    job = json.loads((Path(manifest_path).parent / "sweep_job.json").read_text())
    assert job["status"] == "succeeded"
    report = json.loads((Path(manifest["stages"]["sft"]["path"]) / "training_report.json")
                        .read_text())
    assert report["world_size"] == 2 and report["launcher"] == "submitit"
    assert report["steps"] == 6
    logs = "\n".join(Path(f).read_text() for f in
                     glob.glob(str(tmp_path / "outputs/multirun/*/*/.submitit/*/*_1_log.*")))
    assert "submitit task 1 of 2" in logs
    for task in (0, 1):
        (err,) = glob.glob(str(tmp_path / f"outputs/multirun/*/*/.submitit/*/*_{task}_log.err"))
        _assert_kept_out(Path(err).read_text())
    assert _ranks_left(tmp_path) == []
