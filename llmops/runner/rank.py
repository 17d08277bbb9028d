"""One rank of a launched training job: `python -m llmops.runner.rank SPEC.json`.

torchrun and `accelerate launch` start this module once per rank (llmops.backends.launch writes
the command); it finds the stage's `train` through the runner's dispatch (the stage table) and
hands it to llmops.backends.launch, which sets up the rank and trains it. The tasks other than 0
of a multi-task submitit job `follow` task 0 the same way. Like the stage process, a rank keeps
out the packages its stage does not use (llmops.runner.supervise.unused_packages: bitsandbytes,
which peft imports, ~1 CPU-s a rank; wandb, which TRL imports), before it imports the stage.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import Any

from llmops.backends import launch
from llmops.core.plan import Plan
from llmops.runner import dispatch
from llmops.runner.child import keep_out, rare_full_collections
from llmops.runner.supervise import unused_packages


def trainer(kind: str) -> launch.TrainFn:
    """Returns the `train` function of a training stage kind (sft, dpo), which first keeps out of
    this process the packages the stage's params do not use (`unused_packages`), as the stage
    process does, then imports the stage and trains.

    Every training stage of one plan needs bitsandbytes or none does (they share quant,
    train.optimizer and train.backend), so a submitit task that trains several stages keeps out
    the same packages for each.
    """

    def train(params: dict[str, Any], inputs: dict[str, Path], out_dir: Path,
              ctx: Any) -> dict[str, Any]:
        keep_out(list(unused_packages([params])))
        return dispatch.stage(kind).train(params, inputs, out_dir, ctx)

    return train


def unused_in_runner(plan: Plan) -> tuple[str, ...]:
    """Returns what a runner that runs its stages itself (task 0 of a multi-task submitit job,
    one rank of its training stages) keeps out: what its stage process would
    (`unused_packages`), except wandb under tracking=wandb, whose sink runs in the runner."""
    sink = (plan.config.get("tracking") or {}).get("backend") == "wandb"
    return tuple(p for p in unused_packages(spec.params for spec in plan.stages)
                 if not (sink and p == "wandb"))


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
