"""Counts canonical rows in a model's tokens, a batch at a time, or estimates them without one.

``TokenCounter(tokenizer)`` is a picklable batch function for ``Dataset.map``: it renders each
chat with the tokenizer's own chat template through ``chat.render`` (the one render sft trains on:
call arguments as objects, ``tools`` included) and tokenizes the batch's texts in one call (the
Rust tokenizer, batched), so a row counts the tokens sft will give it. A text row counts what sft
trains on (its text and the eos token, with the tokenizer's special tokens); any row of a
tokenizer without a template counts its plain text. A row the template cannot render (it raises)
is counted from its plain text, marked not measured, and its error is returned (``RENDER_ERROR``)
so that the row is rejected with the template's own message. A render is bounded by
``template_seconds`` (``limits.time_limit``; ``TimeLimit`` past it: a template that loops that
long is a config error, not a row's).

``estimate`` counts about 4 characters per token, for when no tokenizer can be loaded offline.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmops.data import chat
from llmops.data.limits import TimeLimit, time_limit

TOKENS, MEASURED, RENDER_ERROR = "_tokens", "_measured", "_render_error"
CHARS_PER_TOKEN = 4


def plain_text(row: Mapping[str, Any]) -> str:
    """Returns a canonical row's text without a template: contents, calls and tools joined."""
    if row.get("text") is not None:
        return row["text"]
    parts = []
    for m in [*(row.get("messages") or row.get("prompt") or []), *(row.get("chosen") or [])]:
        parts.append(m.get("content") or "")
        parts += [c["function"]["name"] + c["function"]["arguments"]
                  for c in m.get("tool_calls") or []]
    return "\n".join([*parts, row.get("tools") or ""])


def _rows(batch: Mapping[str, list]) -> list[dict[str, Any]]:
    names = [k for k in ("messages", "prompt", "chosen", "rejected", "tools", "text")
             if k in batch]
    return [dict(zip(names, v, strict=True)) for v in zip(*(batch[k] for k in names),
                                                          strict=True)]


class TokenCounter:
    """Counts each row of a batch in the tokenizer's tokens (see the module docstring)."""

    def __init__(self, tokenizer: Any, template_seconds: float | None = None):
        self.tokenizer = tokenizer
        self.template = bool(getattr(tokenizer, "chat_template", None))
        self.template_seconds = template_seconds

    def _render(self, row: dict[str, Any]) -> tuple[str, str | None, bool]:
        """Returns (the text to tokenize, the template's error or None, with the tokenizer's
        special tokens?)."""
        if "text" in row:
            return chat.training_text(self.tokenizer, row["text"]), None, True
        if not self.template:
            return plain_text(row), None, True
        try:
            with time_limit(self.template_seconds):
                return chat.render(self.tokenizer, chat.row_messages(row), row.get("tools")), \
                    None, False
        except TimeLimit:
            raise
        except Exception as exc:  # noqa: BLE001 - any template error: the row's reject says it
            reason = (f"{type(exc).__name__}: {exc}".splitlines() or [""])[0][:300]
            return plain_text(row), reason, False

    def __call__(self, batch: Mapping[str, list], indices: list[int]) -> dict[str, list]:
        """Returns ``{TOKENS: counts, MEASURED: False where the template failed on the row,
        RENDER_ERROR: its error there, else None}``."""
        rendered = [self._render(row) for row in _rows(batch)]
        counts = [0] * len(rendered)
        for special in (False, True):  # one batched call per kind of text
            picked = [i for i, r in enumerate(rendered) if r[2] is special]
            if picked:
                ids = self.tokenizer([rendered[i][0] for i in picked],
                                     add_special_tokens=special)["input_ids"]
                for i, x in zip(picked, ids, strict=True):
                    counts[i] = len(x)
        return {TOKENS: counts, MEASURED: [e is None for _, e, _ in rendered],
                RENDER_ERROR: [e for _, e, _ in rendered]}


def estimate(batch: Mapping[str, list], indices: list[int]) -> dict[str, list]:
    """Returns ``{TOKENS: estimated counts, MEASURED: False}`` (about 4 characters a token)."""
    counts = [len(plain_text(row)) // CHARS_PER_TOKEN + 1 for row in _rows(batch)]
    return {TOKENS: counts, MEASURED: [False] * len(counts)}
