"""Dataset-level helpers around the batch functions: split off rejects, count them, lint a
Dataset, and measure rows in a model's tokens.

``lint(rows, max_length, measure, num_proc)`` maps ``toolcheck.check_batch`` over a Dataset of
canonical rows and returns ``(clean rows, meta + reject of the rest)``, as ``read_source`` does.
``datasets`` and ``pyarrow`` are imported inside the functions.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from llmops.data.canonical import to_openai_row
from llmops.data.toolcheck import Measure, check_batch


def split_rejects(ds, num_proc: int | None = None):
    """Splits a Dataset on its ``reject`` column: (rows without one, meta + reject of the rest)."""
    clean = ds.filter(lambda r: [x is None for x in r], input_columns="reject", batched=True,
                      num_proc=num_proc)
    bad = ds.filter(lambda r: [x is not None for x in r], input_columns="reject", batched=True,
                    num_proc=num_proc)
    return clean.remove_columns("reject"), bad.select_columns(["meta", "reject"])


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
            plain = to_openai_row(row, parse_arguments=True)
            ids = tokenizer.apply_chat_template(
                plain.get("messages") or [*plain["prompt"], *plain["chosen"]],
                tools=plain.get("tools"), tokenize=True, return_dict=True)["input_ids"]
            counts.append(len(ids))
        return counts

    return measure


def lint(rows, max_length: int | None = None, measure: Measure | None = None,
         num_proc: int | None = None):
    """Checks a Dataset of canonical rows; returns ``(clean rows, meta + reject of the rest)``."""
    from llmops.data.canonical import features

    types = rows.features.copy()
    types["reject"] = features("text")["reject"]
    checked = rows.map(partial(check_batch, max_length=max_length, measure=measure),
                       batched=True, with_indices=True, num_proc=num_proc, features=types,
                       desc="check rows")
    return split_rejects(checked, num_proc)
