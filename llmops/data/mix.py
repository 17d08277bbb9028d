"""Row keys, duplicates, mixtures and splits over Arrow datasets, as index arithmetic.

The data stage annotates canonical rows once (``facts``: the row's kind, its called tool, its
calls; ``content_hash``: of the row as written), then works on those columns with numpy: the
first of identical rows is kept (``first_occurrences``), each source contributes its share
(``take``), and the rows are split
stratified by kind and tool (``split_indices``, over ``Labels``' integer codes). Nothing here
holds the rows as Python objects. ``numpy`` and ``xxhash`` (``pyarrow`` inside ``Labels``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import xxhash

from llmops.data import task_api

#: Annotation columns: content hash, kind, first called tool, tool calls, declared tools.
HASH, KIND, TOOL, CALLS, DECLARED = "_hash", "_kind", "_tool", "_calls", "_declared"
CONTENT = ("messages", "prompt", "chosen", "rejected", "tools", "text")


def row_kind(messages: Sequence[Mapping[str, Any]] | None) -> tuple[str, str | None]:
    """Returns a chat's kind by its last assistant turn and the tool it calls first.

    ``tool_call`` when that turn calls tools, ``refusal`` when it declines
    (``task_api.is_refusal``), else ``chat``. The tool of a ``chat`` answer written as a
    Task-API call in text (the bundled set's earlier form) is named too, so splits stay
    stratified by tool.
    """
    last = next((m for m in reversed(messages or []) if m["role"] == "assistant"), None)
    if last is None:
        return "chat", None
    if last.get("tool_calls"):
        return "tool_call", last["tool_calls"][0]["function"]["name"]
    text = last.get("content") or ""
    if task_api.is_refusal(text):
        return "refusal", None
    call = task_api.parse_call(text)
    return "chat", call["tool"] if call else None


def facts(row: Mapping[str, Any]) -> tuple[str, str | None, int, int]:
    """Returns a canonical row's kind (``text`` or ``row_kind``'s), its first called tool, its
    number of tool calls (any assistant turn) and of declared tools."""
    if "text" in row:
        kind, tool = "text", None
    else:
        kind, tool = row_kind(row.get("messages") or [*(row.get("prompt") or []),
                                                     *(row.get("chosen") or [])])
    turns = [*(row.get("messages") or row.get("prompt") or []), *(row.get("chosen") or [])]
    calls = sum(len(m.get("tool_calls") or []) for m in turns)
    return kind, tool, calls, _n_tools(row.get("tools"))


@lru_cache(maxsize=512)
def _n_tools(tools: str | None) -> int:
    return len(json.loads(tools)) if tools else 0


def content_hash(text: str) -> int:
    """Returns the hash that finds duplicates: of a row's content as written (no meta)."""
    return xxhash.xxh3_64_intdigest(text.encode()) >> 1  # fits int64


class Labels:
    """Per-row labels of (kind, tool) as integer codes, numbered in the labels' sorted order,
    so splitting and counting by them needs no Python string per row.

    Args:
        kinds: The rows' kind column (``pyarrow`` strings).
        tools: Their first-called tool column (strings or null).
    """

    def __init__(self, kinds: Any, tools: Any):
        kind_of, self.kinds = _codes(kinds)
        tool_of, self.tools = _codes(tools)
        self.pairs = kind_of * len(self.tools) + tool_of

    def codes(self, rows: np.ndarray, label: Callable[[str, str | None], str]
              ) -> tuple[np.ndarray, list[str]]:
        """Returns ``label(kind, tool)`` of the given rows as codes and the sorted labels they
        number (``labels[code]``)."""
        pairs = self.pairs[rows]
        present = np.unique(pairs)
        texts = [label(self.kinds[p // len(self.tools)], self.tools[p % len(self.tools)])
                 for p in present.tolist()]
        names = sorted(set(texts))
        lookup = np.zeros(int(present.max()) + 1 if present.size else 0, dtype=np.int64)
        lookup[present] = [names.index(t) for t in texts]
        return lookup[pairs], names

    def count(self, rows: np.ndarray, label: Callable[[str, str | None], str]
              ) -> dict[str, int]:
        """Counts the given rows by ``label(kind, tool)``, in the labels' sorted order."""
        codes, names = self.codes(rows, label)
        counts = np.bincount(codes, minlength=len(names))
        return {name: int(n) for name, n in zip(names, counts, strict=True) if n}


def _codes(column: Any) -> tuple[np.ndarray, list[Any]]:
    """Returns a string column as codes and the values they stand for (the last is None, for
    nulls)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    encoded = pc.dictionary_encode(array)
    values = encoded.dictionary.to_pylist()
    codes = pc.fill_null(encoded.indices, len(values)).to_numpy(zero_copy_only=False)
    return codes.astype(np.int64), [*values, None]


def first_occurrences(hashes: np.ndarray) -> np.ndarray:
    """Returns, per row, the index of the first row with the same hash (itself when first)."""
    _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    return first[inverse.reshape(-1)]


def take(n_valid: int, weight: float | None, samples: int | None,
         rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Chooses a source's rows for the mix.

    ``samples`` rows, or ``round(weight * n_valid)``, or all rows when neither is set. At most
    the ``n_valid`` distinct rows are chosen (a seeded sample, in file order); what is asked
    beyond them is returned as a count of repeats, which the caller draws from training rows.

    Returns:
        ``(chosen row positions, repeats)``.
    """
    wanted = samples if samples is not None else (
        round(weight * n_valid) if weight is not None else n_valid)
    unique = min(wanted, n_valid)
    chosen = np.arange(n_valid) if unique == n_valid else np.sort(
        rng.choice(n_valid, size=unique, replace=False))
    return chosen, wanted - unique


def repeats(train: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Returns ``n`` positions drawn from ``train``: whole copies first, then a seeded sample."""
    if n <= 0 or train.size == 0:
        return np.empty(0, dtype=np.int64)
    full, rest = divmod(n, train.size)
    return np.concatenate([np.tile(train, full), np.sort(rng.choice(train, rest,
                                                                     replace=False))])


def _size(n: int, fraction: float) -> int:
    if fraction <= 0:
        return 0
    return max(1, round(n * fraction)) if n >= 3 else 0


def split_indices(strata: np.ndarray, val_fraction: float, test_fraction: float,
                  seed: int) -> dict[str, np.ndarray]:
    """Splits positions ``0..n-1`` into train/val/test, stratified by ``strata``.

    Each stratum is shuffled with ``seed``; all positions are then ordered by their rank inside
    their stratum relative to its size, so any prefix holds every stratum in proportion. Test
    takes the first ``round(n * test_fraction)``, val the next ``round(n * val_fraction)``, train
    the rest; a non-zero fraction gets at least one row when there are 3 rows or more.

    Raises:
        ValueError: If no training row would be left (the message names both fractions).
    """
    rng = np.random.default_rng(seed)
    positions, ranks, ties = [], [], []
    for name in sorted(set(strata.tolist())):
        group = np.flatnonzero(strata == name)
        rng.shuffle(group)
        positions.append(group)
        ranks.append((np.arange(group.size) + 0.5) / group.size)
        ties.append(rng.random(group.size))
    n = int(strata.size)
    if n == 0:
        ordered = np.empty(0, dtype=np.int64)
    else:
        rank, tie = np.concatenate(ranks), np.concatenate(ties)
        ordered = np.concatenate(positions)[np.lexsort((tie, rank))]
    n_test, n_val = _size(n, test_fraction), _size(n, val_fraction)
    if n - n_test - n_val < 1:
        raise ValueError(f"{n} valid rows are too few to split with val_fraction={val_fraction} "
                         f"and test_fraction={test_fraction}. Add rows or lower the fractions.")
    return {"train": ordered[n_test + n_val:], "val": ordered[n_test:n_test + n_val],
            "test": ordered[:n_test]}
