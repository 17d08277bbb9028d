"""Picks the worst-scored test rows per metric, so a user sees what fails. Pure Python."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llmops.scoring.split import reference_text

# Per-row score behind each metric: (metric, kind of rows, score key, worst first = lowest?).
# A flag (True = right) counts as 1/0; only rows that fall short are listed.
_PER_ROW: tuple[tuple[str, str | None, str, bool], ...] = (
    ("tool.exact_match", "tool", "exact", True),
    ("tool.json_valid_rate", "tool", "json_valid", True),
    ("refusal.refusal_rate", "refusal", "refused", True),
    ("text.rouge_l", "text", "rouge_l", True),
    ("text.chrf", "text", "chrf", True),
    ("loss", None, "loss", False),
)


def _prompt(row: Mapping[str, Any]) -> str:
    """Returns the last user message of a row (what was asked)."""
    users = [m for m in row["messages"][:-1] if m.get("role") == "user"]
    return str((users[-1] if users else row["messages"][-2]).get("content") or "")


def worst_examples(rows: Sequence[Mapping[str, Any]], answers: Sequence[str],
                   per_row: Sequence[Mapping[str, Any]], k: int) -> dict[str, list[dict]]:
    """Returns up to k worst rows per metric: row index, prompt, reference, prediction, score.

    Args:
        rows: The test rows.
        answers: The model's answer per row.
        per_row: The per-row scores (``llmops.scoring.split.score_split``'s "per_row").
        k: Rows per metric; 0 lists none.

    Returns:
        {metric: [examples]}, only metrics with rows to show.
    """
    out: dict[str, list[dict]] = {}
    for metric, kind, key, lowest_first in _PER_ROW:
        scored = [(float(s[key]), i) for i, s in enumerate(per_row)
                  if (kind is None or s.get("kind") == kind) and s.get(key) is not None]
        if lowest_first:
            scored = [(v, i) for v, i in scored if v < 1.0]
            scored.sort(key=lambda t: (t[0], t[1]))
        else:
            scored.sort(key=lambda t: (-t[0], t[1]))
        picked = [{"row": i, "prompt": _prompt(rows[i]), "reference": reference_text(rows[i]),
                   "prediction": answers[i], "score": round(v, 6)} for v, i in scored[:k]]
        if picked:
            out[metric] = picked
    return out
