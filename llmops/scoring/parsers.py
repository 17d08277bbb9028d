"""Reads tool calls back out of a model's answer, in the syntax of the model's chat template.

A parser takes the decoded answer and returns a ``ParsedAnswer``: the calls found (each
``{"name", "arguments"}``, arguments as given: an object, or text when they are not JSON), the
text outside the calls, and the syntax errors met (a call that was begun but cannot be read).
``PARSERS`` maps a template's syntax name to its parser; eval picks one by name. Pure Python.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmops.data import task_api


@dataclass(frozen=True)
class ParsedAnswer:
    """What a model answered: its calls, its text, and why any begun call could not be read."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    text: str = ""
    errors: list[str] = field(default_factory=list)


def parse_task_api(text: str) -> ParsedAnswer:
    """Parses the tiny model's syntax: the whole answer is one compact JSON call
    ``{"tool": NAME, "arguments": {...}}`` (see ``task_api.format_call``); anything else is text.
    An answer that opens with ``{`` but is not such a call is a syntax error."""
    call = task_api.parse_call(text)
    if call is not None:
        return ParsedAnswer([{"name": call["tool"], "arguments": call.get("arguments", {})}])
    errors = [] if not text.strip().startswith("{") else [
        "the answer opens like a JSON call but is not {\"tool\": ..., \"arguments\": ...}"]
    return ParsedAnswer([], text.strip(), errors)


_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def parse_hermes(text: str) -> ParsedAnswer:
    """Parses Hermes/Qwen2.5-style calls: ``<tool_call>{"name": ..., "arguments": {...}}
    </tool_call>`` blocks (an unclosed last block is read to the end); the rest is text."""
    calls, errors = [], []
    for k, match in enumerate(_HERMES.finditer(text)):
        try:
            obj = json.loads(match.group(1))
        except json.JSONDecodeError as exc:
            errors.append(f"<tool_call> block {k} is not JSON ({exc.msg})")
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            errors.append(f"<tool_call> block {k} has no string 'name'")
            continue
        calls.append({"name": obj["name"], "arguments": obj.get("arguments", {})})
    return ParsedAnswer(calls, _HERMES.sub("", text).strip(), errors)


PARSERS: dict[str, Callable[[str], ParsedAnswer]] = {
    "task_api": parse_task_api,
    "hermes": parse_hermes,
}


def get_parser(name: str) -> Callable[[str], ParsedAnswer]:
    """Returns the parser of a call syntax by name.

    Raises:
        ValueError: If the name is unknown (naming the known ones).
    """
    if name not in PARSERS:
        raise ValueError(f"call syntax {name!r} is not one of {', '.join(PARSERS)}.")
    return PARSERS[name]
