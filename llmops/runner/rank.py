"""One rank of a launched training job: `python -m llmops.runner.rank SPEC.json`.

torchrun and `accelerate launch` start this module once per rank (llmops.backends.launch writes
the command); it finds the stage's `train` through the runner's dispatch (the stage table) and
hands it to llmops.backends.launch, which sets up the rank and trains it. The tasks other than 0
of a multi-task submitit job `follow` task 0 the same way.
"""

from __future__ import annotations

import gc
import sys

from llmops.backends import launch
from llmops.runner import dispatch
from llmops.runner.child import rare_full_collections


def trainer(kind: str) -> launch.TrainFn:
    """Returns the `train` function of a training stage kind (sft, dpo)."""
    return dispatch.stage(kind).train


def main(argv: list[str] | None = None) -> int:
    """Runs one rank of a launched training job; returns 0 when it finished training.

    What the rank imported (torch, transformers, TRL) lives until the process ends; frozen at the
    end (gc.freeze), it is not walked by the collections the interpreter makes as it exits
    (~1.5 CPU-s a rank); full collections are rare while it imports and trains
    (llmops.runner.child.rare_full_collections)."""
    rare_full_collections()
    try:
        return launch.rank_main(sys.argv[1:] if argv is None else argv, trainer)
    finally:
        gc.freeze()


def follow() -> int:
    """Trains, as a task other than 0 of a multi-task submitit job, every training stage task 0
    hands over, until it says the job is done; returns how many stages it trained."""
    return launch.follow(trainer)


if __name__ == "__main__":
    from torch.distributed.elastic.multiprocessing.errors import record

    sys.exit(record(main)())
