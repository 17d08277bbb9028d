"""Decides which format a file's rows are in, from their keys (``data.format=auto``).

A row points to one format by the keys it carries (after ``data.columns`` renames them); a file
takes the format most of its first rows point to. A chat whose system turn holds ``<tools>`` or
whose assistant turn holds ``<tool_call>`` points to ``hermes``, and one such row among the
first makes the file hermes (its other rows read as they would as sharegpt or openai). Pure
Python.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from llmops.data.convert import DEFAULT_COLUMNS, DEFAULT_TAGS, FORMATS, FormatError, json_value


def detect_row(row: Any, cols: Mapping[str, str] = DEFAULT_COLUMNS,
               tags: Mapping[str, str] = DEFAULT_TAGS) -> str | None:
    """Returns the format a row's keys point to, or None when they point to none."""
    if not isinstance(row, dict):
        return None
    keys = {k for k, v in row.items() if v is not None}
    conv = cols["messages"] if cols["messages"] in keys else (
        "conversations" if "conversations" in keys else None)
    first = json_value(row, conv) if conv else None
    first = first[0] if isinstance(first, list) and first else None
    sharegpt = isinstance(first, dict) and tags["role"] in first
    if {cols["chosen"], cols["rejected"]} <= keys:
        if conv and sharegpt:
            return "sharegpt_preference"
        return "preference" if cols["prompt"] in keys else None
    if conv:
        turns = json_value(row, conv)
        if isinstance(turns, list) and _hermes(turns, tags, sharegpt):
            return "hermes"
        return "sharegpt" if sharegpt or conv == "conversations" else "openai"
    if {cols["query"], cols["answers"]} <= keys:
        return "xlam"
    for fmt, need in (("alpaca", ("instruction", "output")), ("completion", ("prompt",
                      "completion")), ("text", ("text",))):
        if all(cols[n] in keys for n in need):
            return fmt
    return None


def _hermes(turns: list, tags: Mapping[str, str], sharegpt: bool) -> bool:
    """Tells whether a conversation carries Hermes tool markup: ``<tools>`` in a system turn or
    ``<tool_call>`` in an assistant turn."""
    role, content = (tags["role"], tags["content"]) if sharegpt else ("role", "content")
    system = {tags["system"], "system"} if sharegpt else {"system"}
    assistant = {tags["assistant"], "assistant"} if sharegpt else {"assistant"}
    for turn in turns:
        if not isinstance(turn, dict) or not isinstance(turn.get(content), str):
            continue
        text = turn[content]
        if (turn.get(role) in system and "<tools>" in text) or (
                turn.get(role) in assistant and "<tool_call>" in text):
            return True
    return False


def detect_format(rows: list[tuple[int, Any]], file: str, cols: Mapping[str, str] = DEFAULT_COLUMNS,
                  tags: Mapping[str, str] = DEFAULT_TAGS) -> str:
    """Decides a file's format from sample rows ``(row number, value)`` by majority.

    Raises:
        FormatError: If no row tells, or two formats are equally common; names rows and the fix.
    """
    votes: Counter[str] = Counter()
    example: dict[str, int] = {}
    for number, row in rows:
        fmt = detect_row(row, cols, tags)
        if fmt:
            votes[fmt] += 1
            example.setdefault(fmt, number)
    if votes["hermes"]:  # hermes reads a row without markup as sharegpt/openai would
        for plain in ("sharegpt", "openai"):
            votes["hermes"] += votes.pop(plain, 0)
    ranked = votes.most_common(2)
    if not ranked:
        first = next((r for _, r in rows if isinstance(r, dict)), None)
        keys = ", ".join(sorted(first)) if first else "no JSON object"
        raise FormatError(
            f"data.format: cannot tell the format of {file} (first row's keys: {keys}). Expected "
            "messages (openai; hermes when its text holds <tools> or <tool_call>), conversations "
            "(sharegpt), query + answers (xlam), instruction + output (alpaca), prompt + "
            "completion, text, or chosen + rejected (preference). Set data.format to one of "
            f"{', '.join(FORMATS)}, or map the keys with data.columns."
        )
    if len(ranked) == 2 and ranked[0][1] == ranked[1][1]:
        (a, n), (b, _) = ranked
        raise FormatError(
            f"data.format: {file} has {n} rows like {a} (e.g. row {example[a]}) and {n} like {b} "
            f"(e.g. row {example[b]}). Split the file, or set data.format={a} or {b}."
        )
    return ranked[0][0]
