"""An assistant message's reasoning in the canonical row, and what ``data.reasoning`` does to it.

The canonical row keeps a reasoning trace in the assistant message's ``reasoning_content`` (the
key OpenAI-compatible servers and Qwen3's/DeepSeek's templates use; the readers fill it from
``reasoning``, reasoning content parts and a leading ``<think>`` block). It reaches a model only
through the model's own template (``llmops.data.chat.render``). ``data.reasoning`` chooses:
``train`` (in the loss), ``context`` (rendered, out of the loss: sft masks the rendered block,
``llmops.backends.templates``), ``drop`` (the data stage writes the rows without it).

A template may leave a trace out: Qwen3's renders only the reasoning of the turns after the last
user message, as the model sees a conversation when it answers. ``rendered`` tells which traces a
render holds, so the data report counts those the model never sees. Pure Python.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

MODES = ("train", "context", "drop")
KEY = "reasoning_content"


def traces(row: Mapping[str, Any]) -> list[str]:
    """Returns the reasoning traces of a row's assistant messages (the non-blank ones), in
    order."""
    messages = [*(row.get("messages") or row.get("prompt") or []), *(row.get("chosen") or [])]
    return [m[KEY] for m in messages
            if isinstance(m, Mapping) and isinstance(m.get(KEY), str) and m[KEY].strip()]


def has_reasoning(row: Mapping[str, Any]) -> bool:
    """Tells whether a canonical row has an assistant message with reasoning."""
    return bool(traces(row))


def without_reasoning(row: Mapping[str, Any]) -> dict[str, Any]:
    """Returns the row with its messages' reasoning left out (``data.reasoning=drop``)."""
    out = dict(row)
    for key in ("messages", "prompt", "chosen", "rejected"):
        if out.get(key) is not None:
            out[key] = [{k: v for k, v in m.items() if k != KEY} for m in out[key]]
    return out


def rendered(text: str, row_traces: Sequence[str]) -> int:
    """Returns how many of the traces appear, in order, in a rendered chat."""
    pos, found = 0, 0
    for trace in row_traces:
        at = text.find(trace.strip(), pos)
        if at >= 0:
            found += 1
            pos = at + len(trace.strip())
    return found
