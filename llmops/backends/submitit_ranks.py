"""One training job over the tasks of a submitit job (SLURM, or submitit's local executor).

With `hydra.launcher.nodes` x `hydra.launcher.tasks_per_node` tasks, every task is one rank:
submitit's `TorchDistributedEnvironment` gives it RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous
address (the first node), and no launcher runs inside. Task 0 runs the pipeline (store, reports,
W&B); at each training stage it hands the other tasks that stage's launch spec through a
`torch.distributed.TCPStore` (torch's own key-value store, on the rendezvous host and port + 1)
and every task trains it together, the trainer making the process group. The other tasks run
nothing else and end when task 0 says the job is done (or dies).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from datetime import timedelta
from typing import Any

from llmops.backends.ranks import LAUNCHER_ENV

log = logging.getLogger("llmops")
_WAIT = timedelta(days=7)  # a task waits this long for task 0 to reach the next training stage
_DONE = "done"
_state: dict[str, Any] = {"store": None, "next": 0}


def job_rank() -> int | None:
    """Returns this task's rank when it is one task of a multi-task submitit job, else None.

    Exports the rendezvous environment (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK)
    and LLMOPS_LAUNCHER=submitit, so training stages train this task as one rank.
    """
    if importlib.util.find_spec("submitit") is None:
        return None
    import submitit
    from submitit.helpers import TorchDistributedEnvironment

    try:
        if submitit.JobEnvironment().num_tasks <= 1:
            return None
    except RuntimeError:  # not inside a submitit job
        return None
    env = TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    os.environ[LAUNCHER_ENV] = "submitit"
    log.info("submitit task %d of %d (rendezvous %s:%s)", env.rank, env.world_size,
             env.master_addr, env.master_port)
    return env.rank


def _store() -> Any:
    """Returns the job's TCPStore (task 0 serves it), created on first use."""
    if _state["store"] is None:
        from torch.distributed import TCPStore

        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        _state["store"] = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]) + 1,
                                   world, rank == 0, timeout=_WAIT, wait_for_workers=False)
    return _state["store"]


def lead(spec: dict[str, Any]) -> None:
    """Task 0: hands a training stage's launch spec to the other tasks."""
    _store().set(f"spec/{_state['next']}", json.dumps(spec))
    _state["next"] += 1


def finish() -> None:
    """Task 0: tells the other tasks the job is done (they stop waiting for training stages)."""
    _store().set(f"spec/{_state['next']}", _DONE)


def receive(n: int) -> dict[str, Any] | None:
    """A task other than 0: waits for the n-th training stage's spec; None when the job is done."""
    message = _store().get(f"spec/{n}").decode("utf-8")
    return None if message == _DONE else json.loads(message)
