"""On a real one-node SLURM cluster (.ci/slurm.sh starts munged, slurmctld and slurmd for this
module, in its own folder and ports, and stops them at the end): a 2-point sweep through
`hydra/launcher=slurm` (submitit), and one training job of 2 SLURM tasks as 2 ranks (ddp, gloo)
that is requeued mid-training twice, by `scontrol requeue` and by its time limit (SLURM's warning
signal, on which submitit requeues the job itself), resumes from its checkpoint each time and
ends where one process does. The sweep runs beside that job, so its work fills the job's waits on
SLURM (a requeued job's end, slurmctld's time-limit checks every 30 s). The store they share starts
with the session's tiny base and the data stage's output, so the jobs run only sft.

Skips with the reason where the cluster cannot start (no slurm-wlm/munge, not root); fails
instead under LLMOPS_REQUIRE_SLURM=1 (CI). What this does not test: GPUs and several nodes.
"""

from __future__ import annotations

import glob
import json
import os
import re
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import QUICK_PRETRAIN, _compile
from test_distributed_launch import _seed_base_and_data

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "slurm.sh"
# This machine's node: no GPU, one CPU per task, no home-made environment set-up.
LAUNCHER = ("hydra/launcher=slurm", "hydra.launcher.partition=debug",
            "hydra.launcher.gpus_per_node=0", "hydra.launcher.setup=[]",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=4")
TRAIN_ONLY = ("data.n_examples=200", *QUICK_PRETRAIN, "eval=none", "deploy=none",
              "usecase=none", "progress=false")
# The ddp job's time limit: short enough that submitit counts a requeue on its warning as a time
# limit (not a preemption), long enough that only the test brings it on.
LIMIT_MIN = 10
STEPS = 120  # enough that both requeues land mid-training on an idle machine too (a requeued
#               run trains on until its SIGKILL, ~5 s after SIGTERM: slurmd's minimum, whatever
#               KillWait says; 40 steps ran out there)


def _free_port_pair() -> int:
    """Returns a port p with p and p + 1 free (slurmctld's and slurmd's)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65000:
            with socket.socket() as t:
                try:
                    t.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no two consecutive free ports")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory, tiny_base, stage_params) -> dict[str, str]:
    """Starts the cluster; returns the environment its commands and llmops runs use (SLURM_CONF,
    a store every job of this module shares, seeded with the plans' base and data)."""
    folder = tmp_path_factory.mktemp("slurm")
    r = subprocess.run(["bash", str(SCRIPT), "up", str(folder), str(_free_port_pair())],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        reason = f"no SLURM cluster here: {(r.stderr or r.stdout).strip()[-800:]}"
        if os.environ.get("LLMOPS_REQUIRE_SLURM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(SLURM_CONF=str(folder / "slurm.conf"), WANDB_MODE="disabled",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               LLMOPS_STORE=str(tmp_path_factory.mktemp("slurm_store")))
    try:
        _seed_base_and_data(Path(env["LLMOPS_STORE"]), list(TRAIN_ONLY), tiny_base, _compile,
                            stage_params)
        yield env
    finally:
        subprocess.run(["scancel", "--full", "--user", "root"], env=env, capture_output=True)
        subprocess.run(["bash", str(SCRIPT), "down", str(folder)], capture_output=True,
                       timeout=60)


def _llmops(root: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    out = open(root / "stdout.txt", "w")  # noqa: SIM115 (the child writes it)
    err = open(root / "stderr.txt", "w")  # noqa: SIM115
    return subprocess.Popen([sys.executable, "-m", "llmops", "-m", *LAUNCHER, *TRAIN_ONLY, *args],
                            cwd=root, env=env, stdout=out, stderr=err)


def _finish(proc: subprocess.Popen, root: Path) -> None:
    try:
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, (root / "stderr.txt").read_text()[-3000:]


def _job(env: dict[str, str], job_id: str, ended: bool = False) -> dict[str, str]:
    """`scontrol show job` as key -> value; with `ended`, once the job has left SLURM's running
    states (task 0's result can come back while the other tasks are still ending)."""
    deadline = time.time() + 120
    while True:
        text = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=env, check=True,
                              capture_output=True, text=True).stdout
        job = dict(f.split("=", 1) for f in text.split() if "=" in f)
        if not ended or job["JobState"] not in ("PENDING", "RUNNING", "COMPLETING") \
                or time.time() > deadline:
            return job
        time.sleep(0.5)


def _points(root: Path) -> list[dict]:
    """Each sweep point's manifest, in point order."""
    paths = sorted(glob.glob(str(root / "outputs/multirun/*/*/*/manifest.json")),
                   key=lambda p: int(Path(p).parent.name))
    return [json.loads(Path(p).read_text()) for p in paths]


def _report(manifest: dict) -> dict:
    return json.loads((Path(manifest["stages"]["sft"]["path"]) / "training_report.json")
                      .read_text())


class _Sweep:
    """A 2-point sweep (train=none,sft with train.max_steps=STEPS) through hydra/launcher=slurm,
    started once: point 0 finds every stage of its plan in the store (no stage process), point 1
    trains sft on one process."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env, self.proc = root, env, None

    def start(self) -> None:
        if self.proc is None:
            self.proc = _llmops(self.root, self.env, "train=none,sft", f"train.max_steps={STEPS}")

    def finish(self) -> Path:
        """Waits for the sweep (started if it was not); returns its folder."""
        self.start()
        _finish(self.proc, self.root)
        return self.root


@pytest.fixture(scope="module")
def sweep_run(slurm, tmp_path_factory) -> _Sweep:
    """The module's sweep, not yet started: the ddp test starts it once its own job is under
    way, so that the sweep's work fills the time that test waits on SLURM (a requeued job's
    end, slurmctld's time-limit check)."""
    sweep = _Sweep(tmp_path_factory.mktemp("slurm_sweep"), slurm)
    try:
        yield sweep
    finally:
        if sweep.proc is not None and sweep.proc.poll() is None:
            sweep.proc.kill()


@pytest.fixture(scope="module")
def sweep(sweep_run) -> Path:
    """The module's sweep, finished; returns its folder."""
    return sweep_run.finish()


def _ctld_checks(env: dict[str, str]) -> list[datetime]:
    """When slurmctld checked the jobs' time limits (every ~30 s; ctld.log at debug2): the time
    limit's warning signal and its end are only acted on then."""
    log = Path(env["SLURM_CONF"]).with_name("ctld.log").read_text()
    return [datetime.fromisoformat(t) for t in
            re.findall(r"^\[([0-9T:.-]+)\] debug2: Testing job time limits", log, re.M)]


def _wait(what: str, ready, proc: subprocess.Popen, root: Path, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while not ready():
        assert proc.poll() is None and time.time() < deadline, \
            f"{what}: not before the job ended:\n" + (root / "stderr.txt").read_text()[-3000:]
        time.sleep(0.2)


def _checkpoints(store: Path, root: Path) -> list[int]:
    """The steps of the checkpoints of the sft stage of the run in root (its plan names the
    stage's work folder in the store; the sweep beside it trains in its own)."""
    plans = glob.glob(str(root / "outputs/multirun/*/*/0/plan.json"))
    if not plans:
        return []
    (sft,) = [s for s in json.loads(Path(plans[0]).read_text())["stages"] if s["name"] == "sft"]
    work = store / ".work" / f"sft-{sft['fingerprint'][:24]}"
    return sorted(int(p.split("-")[-1].split("/")[0]) for p in glob.glob(
        str(work / "checkpoints/checkpoint-*/trainer_state.json")))


def _job_id(root: Path) -> str:
    """The id of the one SLURM job llmops submitted from root (its submitit folder's name)."""
    (folder,) = [p for p in glob.glob(str(root / "outputs/multirun/*/*/.submitit/*"))
                 if Path(p).name.isdigit()]
    return Path(folder).name


def _resume_before_the_next_check(env: dict[str, str], job_id: str) -> None:
    """Resumes the suspended job about a second before slurmctld's next time-limit check (they
    come every 29 to 31 s; ctld.log has the last one), so it runs for only a moment before it."""
    deadline = time.time() + 120
    while True:
        last = _ctld_checks(env)[-1]
        if datetime.now() < last + timedelta(seconds=28):
            break
        while _ctld_checks(env)[-1] == last:  # that check is about due: wait for it, and go by it
            assert time.time() < deadline, "slurmctld logs no time-limit checks"
            time.sleep(0.1)
    while datetime.now() < last + timedelta(seconds=28):
        time.sleep(0.1)
    subprocess.run(["scontrol", "resume", job_id], env=env, check=True)


def _restart_now(env: dict[str, str], job_id: str, restarts: int, **fields: str) -> None:
    """Once the requeued job is pending again, lets it start now (SLURM holds a requeued job for
    cred_expire seconds), with `fields` changed."""
    deadline = time.time() + 120
    while (job := _job(env, job_id))["JobState"] != "PENDING" \
            or job["Restarts"] != str(restarts):
        assert time.time() < deadline, job
        time.sleep(0.2)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now",
                    *(f"{k}={v}" for k, v in fields.items())], env=env, check=True)


def test_two_slurm_tasks_train_as_two_ranks_survive_a_requeue_and_a_time_limit(
        slurm, sweep_run, tmp_path):
    """One job of 2 SLURM tasks as 2 ranks: requeued by `scontrol requeue` at its first checkpoint,
    then, in its second run, brought to its time limit: SLURM's warning signal (submitit's
    --signal=USR2@120) makes submitit checkpoint the job and requeue itself; the third run
    resumes from the second run's checkpoint, finishes, and ends where one process does (the
    sweep's STEPS point, which runs beside this job from its first requeue on)."""
    proc = _llmops(tmp_path, slurm, "hydra.launcher.tasks_per_node=2", "distributed=ddp",
                   "distributed.nproc_per_node=2", f"train.max_steps={STEPS}",
                   "train.save_steps=4", f"hydra.launcher.timeout_min={LIMIT_MIN}")
    store = Path(slurm["LLMOPS_STORE"])
    _wait("a checkpoint", lambda: _checkpoints(store, tmp_path), proc, tmp_path)
    job_id = _job_id(tmp_path)
    # 1. Preempted: SLURM requeues it (SIGTERM, SIGKILL after KillWait), run 2 resumes.
    subprocess.run(["scontrol", "requeue", job_id], env=slurm, check=True)
    sweep_run.start()  # the one-process reference, beside this job from here on
    _restart_now(slurm, job_id, 1)
    first = _checkpoints(store, tmp_path)[-1]  # run 1 has ended: run 2 resumes from here
    # 2. The time limit: once run 2 has trained past its resume point, the job is suspended and
    # its time limit brought within the warning's 120 s; it runs again just before slurmctld's
    # next time-limit check, which sends USR2: task 0's submitit handler checkpoints the
    # submission, runs `scontrol requeue` itself and exits.
    _wait("run 2 training past its resume point",
          lambda: _checkpoints(store, tmp_path)[-1] > first, proc, tmp_path)
    subprocess.run(["scontrol", "suspend", job_id], env=slurm, check=True)
    second = _checkpoints(store, tmp_path)[-1]
    run_s = sum(int(x) * 60 ** i for i, x in
                enumerate(reversed(_job(slurm, job_id)["RunTime"].split(":"))))
    subprocess.run(["scontrol", "update", f"JobId={job_id}", f"TimeLimit={run_s // 60 + 2}"],
                   env=slurm, check=True)
    _resume_before_the_next_check(slurm, job_id)
    # 3. Run 3 with the job's own limit again.
    _restart_now(slurm, job_id, 2, TimeLimit=str(LIMIT_MIN))
    _finish(proc, tmp_path)

    job = _job(slurm, job_id, ended=True)
    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "2"
    assert job["NumTasks"] == "2"
    (manifest,) = _points(tmp_path)
    sft = manifest["stages"]["sft"]
    assert manifest["status"] == "succeeded" and manifest["stages"]["base"]["status"] == "cached"
    assert sft["status"] == "resumed"
    report = _report(manifest)
    assert report["world_size"] == 2 and report["launcher"] == "submitit"
    assert report["steps"] == STEPS and report["resumed_from_step"] == sft["resumed_from_step"]
    # Run 3 resumed from what run 2 trained, not from run 1's checkpoint.
    assert first < second <= sft["resumed_from_step"] < STEPS, (first, second, sft)
    logs = {Path(f).name: Path(f).read_text() for f in
            glob.glob(str(tmp_path / "outputs/multirun/*/*/.submitit/*/*_log.*"))}
    every = "\n".join(logs.values())
    assert "submitit task 1 of 2" in every and "DUE TO JOB REQUEUE" in every
    task0 = logs[f"{job_id}_0_log.err"] + logs[f"{job_id}_0_log.out"]
    assert "Caught signal SIGUSR2" in task0 and "this job is timed-out" in task0
    assert f"Requeued job {job_id} (2 remaining timeouts)" in task0  # max_num_timeout: 3
    assert "failed while resuming" not in task0  # a stop, not a failure of the checkpoint
    # What one process does: the same effective batch and steps, and about the same loss.
    one = _report(_points(sweep_run.finish())[1])
    assert one["world_size"] == 1 and one["steps"] == STEPS
    assert report["effective_batch"] == one["effective_batch"]
    assert report["per_rank_batch"] * report["grad_accum"] * 2 == report["effective_batch"]
    assert abs(report["eval_loss"] - one["eval_loss"]) < 0.05, (report["eval_loss"],
                                                                one["eval_loss"])


def test_a_two_point_sweep_runs_as_a_slurm_array_of_two_jobs(slurm, sweep):
    points = _points(sweep)
    assert [m["status"] for m in points] == ["succeeded", "succeeded"]
    # Each point got its own value: point 0 (train=none) trains nothing, point 1 STEPS of sft.
    assert [list(m["stages"]) for m in points] == [["base", "data"],
                                                   ["compute", "base", "data", "sft"]]
    assert {s["status"] for s in points[0]["stages"].values()} == {"cached"}
    assert _report(points[1])["steps"] == STEPS
    (array,) = [Path(p).name for p in glob.glob(str(sweep / "outputs/multirun/*/*/.submitit/*"))
                if "_" not in Path(p).name]
    # SLURM itself ran them: two tasks of one array job, completed on this node.
    for task in ("0", "1"):
        job = _job(slurm, f"{array}_{task}", ended=True)
        assert job["JobState"] == "COMPLETED" and job["ArrayJobId"] == array
        assert job["BatchHost"] == socket.gethostname().split(".")[0]
        assert job["Partition"] == "debug"
    # Both points share the store: the second trained on the first's data and base (the seeded
    # ones, which the ddp job found there too).
    assert {m["stages"]["base"]["path"] for m in points} == {points[0]["stages"]["base"]["path"]}
