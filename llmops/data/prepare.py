"""Dataset-level helpers around the batch functions: split off rejects, count them, lint a
Dataset, and measure rows in a model's tokens.

``lint(rows, max_length, measure, num_proc)`` maps ``toolcheck.check_batch`` over a Dataset of
canonical rows and returns ``(clean rows, meta + reject of the rest)``, as ``read_source`` does.
``datasets`` and ``pyarrow`` are imported inside the functions.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from llmops.data import chat
from llmops.data.toolcheck import Measure, check_batch


class ArrowBatches:
    """Wraps a batch function (dict of column lists out) so that it returns a ``pyarrow.Table``
    of the given ``datasets.Features``: one C++ conversion per batch instead of datasets' casts
    value by value (the difference is most of the run time at a million rows)."""

    def __init__(self, fn: Any, types: Any):
        self.fn, self.features, self.schema = fn, types, types.arrow_schema

    def __call__(self, batch: dict, indices: list[int]) -> Any:
        """Returns the function's output for the batch as an Arrow table."""
        import pyarrow as pa

        return pa.Table.from_pydict(self.fn(batch, indices), schema=self.schema)


def split_on(rows, reasons):
    """Splits rows by a same-length Dataset whose ``reject`` column says why a row is out.

    Returns:
        ``(rows without a reject, meta + reject of the others)``; the kept rows are an index
        selection over ``rows`` (numpy indices, no copy of the rows).
    """
    import datasets
    import numpy as np
    import pyarrow.compute as pc

    column = reasons.with_format("arrow")[:].column("reject")
    bad = pc.is_valid(column).to_numpy(zero_copy_only=False)
    bad_idx, good_idx = np.flatnonzero(bad), np.flatnonzero(~bad)
    clean = rows.select(good_idx) if bad_idx.size else rows
    rejects = datasets.concatenate_datasets(
        [rows.select(bad_idx).select_columns(["meta"]).flatten_indices(),
         reasons.select(bad_idx).select_columns(["reject"]).flatten_indices()], axis=1)
    return clean, rejects


def split_rejects(ds):
    """Splits a Dataset on its ``reject`` column: (rows without one, meta + reject of the rest)."""
    clean, rejects = split_on(ds, ds.select_columns(["reject"]))
    return clean.remove_columns("reject"), rejects


def count_rejects(rejects) -> dict[str, int]:
    """Counts rejects by reason code, most common first (Arrow compute, no Python rows)."""
    import pyarrow.compute as pc

    table = rejects.with_format("arrow")[:]
    counts = pc.value_counts(pc.struct_field(table.column("reject"), "code")).to_pylist()
    return dict(sorted(((d["values"], d["counts"]) for d in counts), key=lambda x: (-x[1], x[0])))


def chat_token_counter(tokenizer: Any) -> Measure:
    """Returns a ``measure`` that counts a row's tokens as the tokenizer's chat template renders
    it (tools included); text rows and tokenizers without a template count the plain text."""

    def measure(rows: list[dict[str, Any]]) -> list[int]:
        counts = []
        for row in rows:
            if "text" in row or not getattr(tokenizer, "chat_template", None):
                text = row.get("text") or "\n".join(
                    m["content"] or "" for m in row.get("messages") or [])
                counts.append(len(tokenizer(text)["input_ids"]))
                continue
            ids = chat.render(tokenizer, chat.row_messages(row), row.get("tools"),
                              tokenize=True, return_dict=True)["input_ids"]
            counts.append(len(ids))
        return counts

    return measure


def lint(rows, max_length: int | None = None, measure: Measure | None = None,
         num_proc: int | None = None, limits: Any = None):
    """Checks a Dataset of canonical rows; returns ``(clean rows, meta + reject of the rest)``.

    Only the reject column is written (the rows are not copied); clean rows are an index
    selection over ``rows``.
    """
    from datasets import Features

    from llmops.data.canonical import features

    types = Features({"reject": features("text")["reject"]})
    check = ArrowBatches(partial(check_batch, max_length=max_length, measure=measure,
                                 limits=limits), types)
    reasons = rows.map(check, batched=True, with_indices=True, num_proc=num_proc,
                       remove_columns=rows.column_names, features=types, desc="check rows")
    return split_on(rows, reasons)
