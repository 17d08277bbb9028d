"""Counts canonical rows in a model's tokens, a batch at a time, or estimates them without one.

``TokenCounter(tokenizer)`` is a picklable batch function for ``Dataset.map``: it renders each
chat with the tokenizer's own chat template, ``tools`` included (what the trainer sees), and
tokenizes the batch's texts in one call (the Rust tokenizer, batched). A text row, or any row of a
tokenizer without a template, counts its plain text. A row the template cannot render (it raises)
is counted from its plain text, marked not measured, and its error is returned (``RENDER_ERROR``)
so that the row is rejected with the template's own message. A render is bounded by
``template_seconds`` (``limits.time_limit``; ``TimeLimit`` past it: a template that loops that
long is a config error, not a row's).

``estimate`` counts about 4 characters per token, for when no tokenizer can be loaded offline.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmops.data.canonical import to_openai_row
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

    def _render(self, row: dict[str, Any]) -> tuple[str, str | None]:
        """Returns the row's text and None, or its plain text and the template's error."""
        if "text" in row or not self.template:
            return plain_text(row), None
        plain = to_openai_row(row, parse_arguments=True)
        messages = plain.get("messages") or [*plain["prompt"], *plain["chosen"]]
        try:
            with time_limit(self.template_seconds):
                return self.tokenizer.apply_chat_template(messages, tools=plain.get("tools"),
                                                          tokenize=False), None
        except TimeLimit:
            raise
        except Exception as exc:  # noqa: BLE001 - any template error: the row's reject says it
            return plain_text(row), (f"{type(exc).__name__}: {exc}".splitlines() or [""])[0][:300]

    def __call__(self, batch: Mapping[str, list], indices: list[int]) -> dict[str, list]:
        """Returns ``{TOKENS: counts, MEASURED: False where the template failed on the row,
        RENDER_ERROR: its error there, else None}``."""
        rendered = [self._render(row) for row in _rows(batch)]
        texts = [text for text, _ in rendered]
        ids = self.tokenizer(texts, add_special_tokens=not self.template)["input_ids"]
        return {TOKENS: [len(x) for x in ids], MEASURED: [e is None for _, e in rendered],
                RENDER_ERROR: [e for _, e in rendered]}


def estimate(batch: Mapping[str, list], indices: list[int]) -> dict[str, list]:
    """Returns ``{TOKENS: estimated counts, MEASURED: False}`` (about 4 characters a token)."""
    counts = [len(plain_text(row)) // CHARS_PER_TOKEN + 1 for row in _rows(batch)]
    return {TOKENS: counts, MEASURED: [False] * len(counts)}
