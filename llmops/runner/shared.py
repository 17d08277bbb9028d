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

#: While the block is open: [(how the kept process was started, the process)], else None.
_KEPT: list[tuple[tuple[Any, ...], StageProcess]] | None = None
_OWNER = 0  # the pid that opened the block (a forked child does not share its processes)


@contextlib.contextmanager
def shared_stage_process() -> Iterator[None]:
    """Lets the jobs run meanwhile in this process share their stage process (module doc);
    leaving the block ends the kept process. A nested block changes nothing."""
    global _KEPT, _OWNER
    if _KEPT is not None and _OWNER == os.getpid():
        yield
        return
    _KEPT, _OWNER = [], os.getpid()
    try:
        yield
    finally:
        kept, _KEPT = _KEPT, None
        for _, process in kept:
            process.close()


def _start_key(without: tuple[str, ...]) -> tuple[Any, ...]:
    """What a stage process starts with: its kept-out packages, environment, folder, Python."""
    return without, tuple(sorted(os.environ.items())), os.getcwd(), sys.executable


def job_stage_process(without: tuple[str, ...]) -> tuple[StageProcess, bool]:
    """Returns (the stage process of a job that keeps out `without`, whether it is shared: the
    job must leave it open for the next one)."""
    from llmops.runner.supervise import StageProcess

    if _KEPT is None or _OWNER != os.getpid():
        return StageProcess(without), False
    key = _start_key(without)
    if _KEPT and _KEPT[0][0] == key:
        process = _KEPT[0][1]
        if process.proc is not None and process.proc.returncode is None:
            log.info("stage process: the last job's (pid %d) goes on with this job",
                     process.proc.pid)
        return process, True
    for _, other in _KEPT:  # started differently: this job gets its own, kept for the next
        other.close()
    _KEPT[:] = [(key, StageProcess(without))]
    return _KEPT[0][1], True
