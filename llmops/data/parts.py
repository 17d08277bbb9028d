"""Reads a message's content into text, reasoning and calls; refuses images, audio and video.

A message's ``content`` is a string, None, or a list of parts. A part is a string or an object
whose ``type`` says what it holds:

- text: ``text``, ``input_text``, ``output_text``, ``refusal`` (OpenAI's ``{"type": "text",
  "text": ...}``; the ``value`` spelling of LLaMA-Factory's typed parts, ``{"type": "text",
  "value": ...}``); joined in order;
- reasoning: ``reasoning``, ``thinking``, ``reasoning_text`` (its text under ``text``, ``value``,
  ``thinking``, ``reasoning`` or ``content``): the message's ``reasoning_content``;
- calls: ``tool_call``, ``function_call``, ``tool_use``: an object (OpenAI's call,
  ``{"name", "arguments"}``, Anthropic's ``{"name", "input"}``) or its JSON text under
  ``value`` / ``text`` / ``function``: the message's ``tool_calls``;
- images, audio, video and files (``image``, ``image_url``, ``input_image``, ``audio``,
  ``input_audio``, ``video``, ``video_url``, ``file``, ...): refused by name
  (``unsupported_modality``), never dropped: llmops trains text models.

An assistant text that opens with ``<think>...</think>`` gives that block as its reasoning
(``split_think``). Reasoning and calls are untrusted like any text: a reasoning value that is not
text, one that holds think tags itself, or a think block that never closes is a reject with its
own code. Pure Python.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from llmops.data import canonical as c

TEXT_PARTS = frozenset({"text", "input_text", "output_text", "refusal"})
REASONING_PARTS = frozenset({"reasoning", "thinking", "reasoning_text", "redacted_thinking"})
CALL_PARTS = frozenset({"tool_call", "function_call", "tool_use"})
MODALITY_PARTS: dict[str, str] = {
    "image": "image", "image_url": "image", "input_image": "image", "image_file": "image",
    "audio": "audio", "input_audio": "audio", "audio_url": "audio",
    "video": "video", "video_url": "video", "input_video": "video",
    "file": "file", "input_file": "file", "document": "file",
}
#: The sentence every refusal of a modality ends with.
UNSUPPORTED_FIX = ("llmops trains text models; drop these rows with data.on_unsupported=drop or "
                   "convert them to text.")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_LEADING_THINK = re.compile(r"\s*<think>(.*?)</think>\s*", re.DOTALL)
NO_CALLS: tuple = ()
#: Placeholders other tools put in the text where an image, audio or video goes.
MARKERS = re.compile(r"<(image|audio|video)>")


@dataclass
class Content:
    """A message's content read: its text (None when it had none), reasoning and calls."""

    text: str | None
    reasoning: str | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)


def unsupported(kind: str, path: str, what: str | None = None) -> c.Rejected:
    """Returns the reject of a row holding an image, audio, video or file."""
    return c.Rejected("unsupported_modality", path,
                      f"holds {what or f'a {kind} part'}. {UNSUPPORTED_FIX}")


def _part_text(part: dict[str, Any], kind: str, path: str) -> str:
    for key in ("text", "value", kind, "content", "reasoning", "thinking"):
        value = part.get(key)
        if isinstance(value, str):
            return value
    raise c.Rejected("content_part", path, f"a {kind!r} part must hold its text under 'text' or "
                     "'value' (got keys " + ", ".join(sorted(map(str, part))) + "). Write "
                     f'{{"type": "{kind}", "text": ...}}.')


def _part_call(part: dict[str, Any], path: str, call_id: str) -> dict[str, Any]:
    from llmops.data.jsontext import TooDeep, loads

    value: Any = part
    for key in ("value", "text", "function", "tool_call"):
        if key in part and key != "type":
            value = part[key]
            break
    if isinstance(value, str):
        try:
            value = loads(value, 64)
        except TooDeep:
            raise c.Rejected("too_deep", path, "holds a call nested too deep; it is not parsed. "
                             "Flatten it.") from None
        except ValueError as exc:
            raise c.Rejected("tool_call_not_json", path, f"holds call text that is not JSON "
                             f"({exc}). Write the call as {{\"name\": ..., \"arguments\": "
                             "{...}}.") from None
    if isinstance(value, dict) and value is part:
        value = {k: v for k, v in part.items() if k != "type"}
    if isinstance(value, dict) and "input" in value and "arguments" not in value:
        value = {**value, "arguments": value["input"]}  # Anthropic's tool_use
    return c.tool_call(value, path, call_id)


def read_content(value: Any, path: str, role: str, turn: int = 0) -> Content:
    """Reads a message's content (a string, None or a list of parts; see the module docstring).

    Args:
        value: The content.
        path: Its JSON path, for rejects (``messages[2].content``).
        role: The message's canonical role: only an assistant message may hold reasoning or calls.
        turn: The message's index, for the ids of calls that come without one.

    Raises:
        canonical.Rejected: For an unknown part, an image/audio/video part, reasoning or calls
            on a turn that is not the assistant's, or content that is not text or parts.
    """
    if value is None:
        return Content(None)
    if isinstance(value, str):
        return Content(value)
    if isinstance(value, dict):  # a single part
        value = [value]
    if not isinstance(value, list):
        raise c.Rejected("bad_content", path, "must be a string, null or a list of content "
                         f"parts (got {type(value).__name__}).")
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    for k, part in enumerate(value):
        where = f"{path}[{k}]"
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict):
            raise c.Rejected("content_part", where, f"must be a string or a typed part object "
                             f"(got {'null' if part is None else type(part).__name__}).")
        kind = part.get("type", "text")
        if not isinstance(kind, str):
            kind = repr(kind)
        if kind in MODALITY_PARTS:
            raise unsupported(MODALITY_PARTS[kind], f"{where}.type",
                              f"a content part of type {kind!r}")
        if kind in TEXT_PARTS:
            texts.append(_part_text(part, kind, where))
        elif kind in REASONING_PARTS:
            if role != "assistant":
                raise c.Rejected("reasoning_not_assistant", where, f"a {role} turn holds a "
                                 "reasoning part; only assistant turns reason. Move it or drop "
                                 "it.")
            reasoning.append(_part_text(part, kind, where))
        elif kind in CALL_PARTS:
            if role != "assistant":
                raise c.Rejected("call_not_assistant", where, f"a {role} turn holds a "
                                 f"{kind!r} part; only assistant turns call tools. Move it or "
                                 "drop it.")
            calls.append(_part_call(part, where, f"call_{turn}_{len(calls)}"))
        else:
            allowed = ", ".join(sorted(TEXT_PARTS | REASONING_PARTS | CALL_PARTS))
            raise c.Rejected("content_part", f"{where}.type", f"content part of type {kind!r} "
                             f"is not one llmops reads (text parts: {allowed}). Turn it into "
                             "text or drop it.")
    return Content("".join(texts) if texts or not (reasoning or calls) else None,
                   "\n".join(reasoning) if reasoning else None, calls)


def split_think(text: str | None, path: str) -> tuple[str | None, str | None]:
    """Returns ``(reasoning, answer)`` of an assistant text: a leading ``<think>...</think>``
    block is the reasoning (None when absent or empty), the rest the answer.

    Raises:
        canonical.Rejected: If a ``<think>`` opens the text but never closes
            (``unclosed_think``), or the answer holds another think tag (``stray_think``).
    """
    if text is None or THINK_OPEN not in text and THINK_CLOSE not in text:
        return None, text
    match = _LEADING_THINK.match(text)
    if match is None:
        if text.lstrip().startswith(THINK_OPEN):
            raise c.Rejected("unclosed_think", path, "opens a <think> block that never closes. "
                             "Close it with </think> before the answer.")
        return None, check_no_think(text, path, "the answer")
    reasoning, answer = match[1].strip(), text[match.end():]
    check_no_think(answer, path, "the answer after </think>")
    check_no_think(reasoning, path, "the reasoning")
    return reasoning or None, answer


def check_no_think(text: str, path: str, what: str) -> str:
    """Returns the text; rejects it (``stray_think``) when it holds a think tag, which a
    template would render as a second reasoning block."""
    if THINK_OPEN in text or THINK_CLOSE in text:
        raise c.Rejected("stray_think", path, f"{what} holds a <think> or </think> tag outside a "
                         "leading think block. Keep one <think>...</think> at the start of the "
                         "answer, or put the trace in reasoning_content.")
    return text


def reasoning_value(value: Any, path: str) -> str | None:
    """Returns a ``reasoning_content`` / ``reasoning`` value as text (None or empty: none);
    OpenAI's reasoning object (``{"summary": [...]}`` or ``{"text"}``) gives its text."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("text", value.get("content", value.get("summary")))
    if isinstance(value, list):  # parts or summary items
        texts = [p if isinstance(p, str) else p.get("text") if isinstance(p, dict) else None
                 for p in value]
        if all(isinstance(t, str) for t in texts):
            value = "\n".join(texts)  # type: ignore[arg-type]
    if not isinstance(value, str):
        raise c.Rejected("bad_reasoning", path, "must be the reasoning as text (got "
                         f"{type(value).__name__}). Write the trace as a string.")
    check_no_think(value, path, "the reasoning")
    return value.strip() or None


def note_unused(unused: dict[str, Any] | None, name: str, value: Any) -> None:
    """Records a column or message key the reader did not use, with its first value seen."""
    if unused is not None and value is not None and name not in unused:
        unused[name] = value


def assistant_parts(role: str, value: Any, where: str, turn: int, reasoning: Any = None,
                    key: str | None = "content") -> tuple[str | None, str | None, Any]:
    """Reads a message's content and reasoning: ``(text, reasoning, calls from parts)`` (the
    calls a list, or an empty tuple when there are none).

    The reasoning comes from ``reasoning`` (a ``reasoning_content`` / ``reasoning`` value),
    reasoning parts, or a leading ``<think>`` block of an assistant text; two of them at once is
    a reject (``reasoning_twice``). Text of any turn is refused when it holds an ``<image>``,
    ``<audio>`` or ``<video>`` placeholder. ``where`` is the message's JSON path and ``key``
    its content's key (None: ``where`` is the content's own path), for rejects.
    """
    if reasoning is None and isinstance(value, str) and "<" not in value:
        return value, None, NO_CALLS  # plain text: no think block, no placeholder (most rows)
    path = where if key is None else f"{where}.{key}"
    content = read_content(value, path, role, turn)
    text, trace = content.text, content.reasoning
    if text is not None:
        marker = MARKERS.search(text)
        if marker:
            raise unsupported(marker[1], path,
                                    f"an <{marker[1]}> placeholder, so the row belongs with "
                                    f"{marker[1]} files")
    given = reasoning_value(reasoning, f"{where}.reasoning_content")
    if role == "assistant":
        think, text = split_think(text, path)
    else:
        think = None
        if given is not None:
            raise c.Rejected("reasoning_not_assistant", f"{where}.reasoning_content",
                             f"a {role} turn has reasoning; only assistant turns reason. Move "
                             "or drop it.")
    found = [t for t in (given, trace, think) if t is not None]
    if len(found) > 1:
        raise c.Rejected("reasoning_twice", f"{where}", "holds its reasoning twice (a "
                         "reasoning_content field, a reasoning part or a leading <think> "
                         "block). Keep one.")
    return text, (found[0] if found else None), content.calls
