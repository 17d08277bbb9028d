"""Batches that shrink on out-of-memory: eval's held-out loss and generation run through here.

Rows are grouped by a token budget (``llmops.planning.eval_memory.token_batches``, the grouping the
memory plan assumes). When a batch raises an accelerator out-of-memory error (accelerate's
``should_reduce_batch_size``), the row cap and the token budget are halved, the device cache is
released, and the rows not yet done are grouped again; each halving is recorded so the stage's
report can say so. A single row that does not fit is a StageError naming the knobs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from llmops.errors import StageError

log = logging.getLogger(__name__)


def run_batches(phase: str, lengths: Sequence[int], max_rows: int, token_budget: int | None,
                run: Callable[[list[int]], None], retries: list[dict[str, Any]] | None = None
                ) -> None:
    """Calls ``run(indices)`` on token-budget batches of all rows, halving the batch on OOM.

    Args:
        phase: What runs ("generation", "held-out loss"), for the record and the errors.
        lengths: Tokens of each row as batched (padded width counts).
        max_rows: Most rows per batch (eval.batch_size).
        token_budget: Most rows x padded length per batch (eval.token_budget); None: rows only.
        run: Does one batch; must finish a batch's rows completely or raise.
        retries: Each halving is appended here as {"phase", "rows": [from, to],
            "token_budget": [from, to]}.

    Raises:
        StageError: When one row alone runs out of memory.
    """
    from accelerate.utils.memory import clear_device_cache, should_reduce_batch_size

    from llmops.planning.eval_memory import token_batches

    todo = list(range(len(lengths)))
    while todo:
        failed: list[int] | None = None
        batches = token_batches([lengths[i] for i in todo], max_rows, token_budget)
        done: set[int] = set()
        for batch in batches:
            idx = [todo[j] for j in batch]
            try:
                run(idx)
            except Exception as e:  # noqa: BLE001 - only OOM is handled, the rest re-raised
                if not should_reduce_batch_size(e):
                    raise
                failed = idx
                break
            done.update(idx)
        todo = [i for i in todo if i not in done]
        if failed is None:
            return
        clear_device_cache(garbage_collection=True)
        if len(failed) <= 1:
            raise StageError(
                f"eval: out of memory in the {phase} on a single row of {lengths[failed[0]]} "
                "tokens. Lower eval.max_new_tokens or the data's max length, evaluate on a "
                "larger device, or quantize (quant=nf4).")
        rows = max(1, len(failed) // 2)
        budget = max(1, token_budget // 2) if token_budget else None
        log.warning("%s: out of memory on %d rows; retrying with %d rows per batch "
                    "(token budget %s)", phase, len(failed), rows, budget)
        if retries is not None:
            retries.append({"phase": phase, "rows": [len(failed), rows],
                            "token_budget": [token_budget, budget]})
        max_rows, token_budget = rows, budget
