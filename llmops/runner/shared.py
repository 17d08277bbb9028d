"""One stage process for the jobs a sweep runs one after another in one process.

Hydra's basic launcher and the Optuna sweeper run a sweep's points in the CLI's process, one job
after another; each job would start its own stage process (llmops.runner.supervise) and pay again
the seconds of importing torch, transformers, peft and TRL there. Inside `shared_stage_process()`
a job whose stage process would start as the last job's did (the same kept-out packages,
environment, working folder and interpreter) takes that process over instead. The stage process
gives back a finished stage's memory before it runs the next one (llmops.runner.child.
release_memory), whichever job the next one belongs to; one that died or was stopped is replaced,
as within a job. Jobs a launcher runs in other processes (joblib, submitit) are not affected.

This module imports nothing heavy: the CLI opens the block before Hydra starts the jobs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmops.runner.supervise import StageProcess

log = logging.getLogger("llmops")

#: The pid that opened the block, None while it is closed (a forked child shares nothing).
_OWNER: int | None = None
#: The kept stage process and how it was started (`_start_key`), once a job started one.
_KEPT: tuple[tuple[Any, ...], StageProcess] | None = None


@contextlib.contextmanager
def shared_stage_process() -> Iterator[None]:
    """Lets the jobs run meanwhile in this process share their stage process (module doc);
    leaving the block ends the kept process. A nested block changes nothing."""
    global _KEPT, _OWNER
    if _OWNER == os.getpid():
        yield
        return
    _OWNER, _KEPT = os.getpid(), None
    try:
        yield
    finally:
        kept, _OWNER, _KEPT = _KEPT, None, None
        if kept is not None:
            kept[1].close()


def _start_key(without: tuple[str, ...]) -> tuple[Any, ...]:
    """What a stage process starts with: its kept-out packages, environment, folder, Python."""
    return without, tuple(sorted(os.environ.items())), os.getcwd(), sys.executable


def job_stage_process(without: tuple[str, ...]) -> tuple[StageProcess, bool]:
    """Returns (the stage process of a job that keeps out `without`, whether it is shared: the
    job must leave it open for the next one)."""
    global _KEPT
    from llmops.runner.supervise import StageProcess

    if _OWNER != os.getpid():
        return StageProcess(without), False
    key = _start_key(without)
    if _KEPT is not None and _KEPT[0] == key:
        process = _KEPT[1]
        if process.proc is not None and process.proc.returncode is None:
            log.info("stage process: the last job's (pid %d) goes on with this job",
                     process.proc.pid)
        return process, True
    if _KEPT is not None:  # started differently: this job gets its own, kept for the next
        _KEPT[1].close()
    _KEPT = (key, StageProcess(without))
    return _KEPT[1], True
