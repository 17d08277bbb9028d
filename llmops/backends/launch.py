"""Runs a training stage on several processes through an existing launcher, or as one process.

The stage's process stays the llmops runner. For a world size above 1 it writes the stage's
params, inputs and context to out_dir/launch/spec.json and starts, as a real subprocess,

    python -m torch.distributed.run --standalone --nproc_per_node N -m llmops.runner.rank SPEC
    python -m accelerate.commands.launch --config_file ACCEL.yaml -m llmops.runner.rank SPEC

(`distributed.launcher`); the stage hands `run_stage` its own `train` function, and each rank
finds that function through the runner's dispatch (llmops.runner.rank) and trains it with
`rank_main` here. Rank 0 writes the report and artifacts; the runner publishes them as for one
process. Rank 0's log lines reach the runner's log; a failing rank fails the stage with the tail
of the job's output. A stop (Ctrl-C, SIGTERM) or the death of the runner stops every rank. Inside
a multi-task submitit job every task is already one rank (see llmops.backends.submitit_ranks);
then nothing is launched.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmops.backends.ranks import LAUNCHER_ENV, current_world, is_main_rank, world_size
from llmops.errors import StageError
from llmops.files import write_json

_MARK = "\x1fllmops-log "  # a log record of rank 0, relayed into the runner's logging
_TAIL_LINES = 40
_STOP_WAIT_S = 30
_PR_SET_PDEATHSIG = 1
# The module each launched rank runs: it finds the stage's `train` through the runner's dispatch.
RANK_ENTRY = "llmops.runner.rank"

# A training stage's `train(params, inputs, out_dir, ctx)`: trains one rank, returns the report.
TrainFn = Callable[[dict[str, Any], dict[str, Path], Path, Any], dict[str, Any]]


def run_stage(kind: str, train: TrainFn, report: str, params: dict[str, Any],
              inputs: dict[str, Path], out_dir: Path, ctx: Any) -> dict[str, Any]:
    """Trains stage `kind` (sft, dpo) on as many processes as params["distributed"] asks.

    With a distributed group the ranks always run under its launcher, one process included (so a
    one-GPU check runs the same path as eight); with distributed=none this process trains.

    Args:
        kind: The stage kind (sft, dpo): the launch spec names it, so that each launched rank
            finds the same `train` (llmops.runner.rank).
        train: The stage's `train(params, inputs, out_dir, ctx)`, which trains one rank.
        report: The file name of the report rank 0 writes into out_dir.
        params: The compiled stage params; "distributed" only when it is not none.
        inputs: The stage inputs by upstream kind.
        out_dir: The stage's output folder (the ranks write there; rank 0 writes the report).
        ctx: Run context.

    Returns:
        The training report (rank 0's).

    Raises:
        StageError: When the job cannot be launched here or a rank fails.
    """
    dist = params.get("distributed")
    if not dist:  # distributed=none: this process trains
        return train(params, inputs, Path(out_dir), ctx)
    world = world_size(dist)
    if os.environ.get(LAUNCHER_ENV) == "submitit" and current_world() > 1:
        from llmops.backends.submitit_ranks import lead

        if current_world() != world:
            raise StageError(
                f"{kind}: distributed.nnodes x distributed.nproc_per_node = {world}, but this "
                f"submitit job has {current_world()} tasks. Set hydra.launcher.nodes x "
                "hydra.launcher.tasks_per_node to the same number (one task per rank).")
        spec = _spec(kind, params, inputs, out_dir, ctx)
        lead(spec)
        return train_spec(spec, train)
    return _spawn(kind, report, params, inputs, Path(out_dir), ctx, world)


def train_spec(spec: dict[str, Any], train: TrainFn) -> dict[str, Any]:
    """Trains one rank from a launch spec (as written by run_stage) with the stage's `train`.

    The compiled batch_size and grad_accum are already per rank (llmops.planning.batch divides
    train.effective_batch by the world size).
    """
    from llmops.core.context import StageContext

    c = spec["ctx"]
    main = is_main_rank()
    ctx = StageContext(run_dir=Path(c["run_dir"]), device=c["device"], seed=c["seed"],
                       logger=logging.getLogger(f"llmops.stage.{spec['stage']}"),
                       show_progress=bool(c["show_progress"]) and main, threads=c["threads"])
    inputs = {k: Path(v) for k, v in spec["inputs"].items()}
    return train(spec["params"], inputs, Path(spec["out_dir"]), ctx)


def follow(trainer: Callable[[str], TrainFn]) -> int:
    """Trains, as a task other than 0 of a multi-task submitit job, every training stage task 0
    hands over, until it says the job is done; returns how many stages it trained.

    Args:
        trainer: Returns a stage kind's `train` (the runner's dispatch).
    """
    from llmops.backends.submitit_ranks import receive

    trained = 0
    while (spec := receive(trained)) is not None:
        train_spec(spec, trainer(spec["stage"]))
        trained += 1
    return trained


def _spec(kind: str, params: dict[str, Any], inputs: dict[str, Path], out_dir: Path,
          ctx: Any) -> dict[str, Any]:
    return {"stage": kind, "params": params, "out_dir": str(out_dir),
            "inputs": {k: str(v) for k, v in inputs.items()},
            "ctx": {"run_dir": str(ctx.run_dir), "device": ctx.device, "seed": ctx.seed,
                    "show_progress": ctx.show_progress, "threads": ctx.threads}}


def launch_command(dist: dict[str, Any], world: int, spec: Path, device: str) -> list[str]:
    """Returns the launcher command line that runs every rank of one node on `spec`.

    Raises:
        StageError: For more than one node outside a SLURM/submitit job, or an unknown launcher.
    """
    if int(dist["nnodes"]) > 1:
        raise StageError(
            f"distributed.nnodes={dist['nnodes']}: a job on several nodes starts one task per "
            "rank on every node, which SLURM does: run it with hydra/launcher=slurm "
            "hydra.launcher.nodes=N hydra.launcher.tasks_per_node=GPUS (see README, Many GPUs "
            "and nodes), or use distributed.nnodes=1 on one machine.")
    if device == "cpu" and dist["strategy"] != "ddp":
        # accelerate 1.15 turns FSDP/DeepSpeed on only for GPU-like distributed types; on a CPU
        # (MULTI_CPU) it would silently train as DDP.
        raise StageError(
            f"distributed.strategy={dist['strategy']} shards over GPUs only: on a CPU accelerate "
            "runs it as plain DDP. Use distributed=ddp on a CPU, or a CUDA hardware profile.")
    entry = ["-m", RANK_ENTRY, str(spec)]
    nproc = int(dist["nproc_per_node"])
    if dist["launcher"] == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={nproc}", *entry]
    if dist["launcher"] == "accelerate":
        config = spec.with_name("accelerate.yaml")
        from llmops.backends.accelerate_config import write_accelerate_config

        write_accelerate_config(config, dist, world, device)
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(config), *entry]
    raise StageError(f"distributed.launcher {dist['launcher']!r} is not one of torchrun, "
                     "accelerate. Use distributed.launcher=torchrun.")


def _spawn(kind: str, report_file: str, params: dict[str, Any], inputs: dict[str, Path],
           out_dir: Path, ctx: Any, world: int) -> dict[str, Any]:
    """Runs every rank under the launcher as a subprocess; returns rank 0's report."""
    dist = params["distributed"]
    launch_dir = out_dir / "launch"
    launch_dir.mkdir(parents=True, exist_ok=True)
    spec_path = launch_dir / "spec.json"
    write_json(spec_path, _spec(kind, params, inputs, out_dir, ctx))
    cmd = launch_command(dist, world, spec_path, ctx.device)
    (launch_dir / "command.txt").write_text(" ".join(cmd) + "\n", encoding="utf-8")
    env = {**os.environ, LAUNCHER_ENV: str(dist["launcher"]), "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": str(ctx.threads or 1), "TOKENIZERS_PARALLELISM": "false"}
    ctx.logger.info("%s: %d processes (%s, %s): %s", kind, world, dist["strategy"],
                    dist["launcher"], " ".join(cmd[1:4]))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            preexec_fn=_die_with_parent(signal.SIGTERM))
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    try:
        _relay(proc, tail)
        code = proc.wait()
    except BaseException:
        _stop(proc)
        raise
    if code != 0:
        lines = "\n".join(f"    {line}" for line in tail)
        raise StageError(
            f"{kind}: the {world}-process training job failed ({dist['launcher']} exit code "
            f"{code}). Last lines of its output:\n{lines}\nFix what they name; a rerun resumes "
            f"from the last checkpoint (command: {launch_dir / 'command.txt'}).")
    report = out_dir / report_file
    try:
        return json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise StageError(f"{kind}: the training job ended without rank 0's report {report} "
                         f"({e}). See the job's output above.") from e


def _relay(proc: subprocess.Popen, tail: deque[str]) -> None:
    """Copies the job's output to ours until it ends: rank 0's log records into our logging,
    the rest (progress bars, warnings, tracebacks) to stderr as it comes; keeps the last lines."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    fd = proc.stdout.fileno()
    pending = ""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        pending += decoder.decode(chunk)
        *lines, pending = pending.split("\n")
        for line in lines:
            _emit(line + "\n", tail)
        if "\r" in pending:  # a progress bar redraw: show it now
            sys.stderr.write(pending)
            sys.stderr.flush()
            pending = ""
    if pending:
        _emit(pending, tail)


def _emit(line: str, tail: deque[str]) -> None:
    if line.startswith(_MARK):
        try:
            level, name, message = json.loads(line[len(_MARK):])
        except ValueError:
            level, name, message = logging.INFO, "llmops", line[len(_MARK):].rstrip()
        logging.getLogger(name).log(int(level), "%s", message)
        tail.append(message)
        return
    sys.stderr.write(line)
    sys.stderr.flush()
    text = line.split("\r")[-1].rstrip()
    if text:
        tail.append(text)


def _stop(proc: subprocess.Popen) -> None:
    """Stops the launcher (it stops its ranks); kills it if it does not end in time."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=_STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _die_with_parent(sig: int) -> Any:
    """Returns a preexec function asking Linux to send `sig` to the child when we die (even by
    SIGKILL), so that no launcher or rank outlives the runner. None where there is no prctl."""
    if not sys.platform.startswith("linux"):
        return None

    def _set() -> None:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig))

    return _set


class _Relayed(logging.Handler):
    """Writes log records to stdout in the form the runner's relay turns back into records."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stdout.write(_MARK + json.dumps([record.levelno, record.name,
                                                 record.getMessage()]) + "\n")
            sys.stdout.flush()
        except (OSError, ValueError, TypeError):
            self.handleError(record)


def _setup_rank_logging(main: bool) -> None:
    """Rank 0 relays llmops's records (INFO and up); the other ranks show only errors."""
    root = logging.getLogger()
    root.handlers[:] = [_Relayed()] if main else [logging.StreamHandler(sys.stderr)]
    root.setLevel(logging.INFO if main else logging.ERROR)
    if not main:
        import warnings

        warnings.simplefilter("ignore")
        # Progress bars too (tqdm reads TQDM_DISABLE when it is imported, after this).
        os.environ.update(TRANSFORMERS_VERBOSITY="error", TQDM_DISABLE="1",
                          HF_DATASETS_DISABLE_PROGRESS_BARS="1")


def rank_main(argv: list[str], trainer: Callable[[str], TrainFn]) -> int:
    """Runs one rank of a launched training job (`python -m llmops.runner.rank SPEC.json`).

    Args:
        argv: [SPEC.json], the launch spec run_stage wrote.
        trainer: Returns a stage kind's `train` (the runner's dispatch).

    Returns:
        0 when the rank finished training; 1 when the launcher died before the rank started.
    """
    parent = os.getppid()
    preexec = _die_with_parent(signal.SIGKILL)
    if preexec is not None:
        preexec()
    if parent == 1 or os.getppid() != parent:  # the launcher died before we could follow it
        return 1
    _setup_rank_logging(is_main_rank())
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    try:
        train_spec(spec, trainer(spec["stage"]))
    finally:
        _close_group()
    return 0


def _close_group() -> None:
    """Destroys the process group the trainer made, so the rank exits cleanly."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
