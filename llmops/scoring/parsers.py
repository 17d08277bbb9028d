"""Reads tool calls back out of a model's answer, in the syntax of the model's chat template.

A parser takes the decoded answer and returns a ``ParsedAnswer``: the calls found (each
``{"name", "arguments"}``, arguments an object), the text outside the calls, and the syntax errors
met (a call that was begun but cannot be read). Every syntax read here (the tiny model's, Hermes /
Qwen ``<tool_call>`` blocks, Llama 3.1 JSON) writes arguments as a JSON *object*: a call whose
arguments are anything else, a JSON string holding an object above all (double-encoded, what a
model trained on string arguments writes), is no call but a syntax error, counted in
``double_encoded`` when it is a string. So scoring cannot read a double-encoded call as right.
(OpenAI's protocol, where ``arguments`` is JSON text, is read by the endpoint's client, not here.)
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
    double_encoded: int = 0


def arguments_problem(args: Any) -> str | None:
    """Returns why a parsed call's arguments are not the JSON object the syntax writes (None
    when they are one): a string is double-encoded."""
    if isinstance(args, dict):
        return None
    if isinstance(args, str):
        return ("has its arguments as a JSON string, not an object (double-encoded: "
                f"{args[:60]!r})")
    return f"has arguments that are not an object (got {type(args).__name__})"


def _checked(calls: list[dict[str, Any]], errors: list[str], what: str, name: str,
             args: Any) -> int:
    """Adds a call with object arguments to calls, else an error; returns 1 when the arguments
    were a string (double-encoded)."""
    problem = arguments_problem(args)
    if problem is None:
        calls.append({"name": name, "arguments": args})
        return 0
    errors.append(f"{what} {problem}")
    return int(isinstance(args, str))


def parse_task_api(text: str) -> ParsedAnswer:
    """Parses the tiny model's syntax (its chat template's): the answer's text, then one line per
    call, each a JSON object ``{"tool": NAME, "arguments": {...}}`` (see ``task_api.format_call``).
    A line that opens with ``{`` but is not such a call (e.g. the legacy ``{"action", "params"}``
    form, or cut-off JSON) is a syntax error; other lines are text."""
    calls, text_lines, errors, doubled = [], [], [], 0
    for k, line in enumerate(text.strip().splitlines()):
        call = task_api.parse_call(line)
        if call is not None:
            doubled += _checked(calls, errors, f"line {k + 1}", call["tool"],
                                call.get("arguments", {}))
        elif line.strip().startswith("{"):
            errors.append(f"line {k + 1} opens like a JSON call but is not "
                          '{"tool": ..., "arguments": ...}')
        else:
            text_lines.append(line)
    return ParsedAnswer(calls, "\n".join(text_lines).strip(), errors, doubled)


_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def parse_hermes(text: str) -> ParsedAnswer:
    """Parses Hermes/Qwen2.5-style calls: ``<tool_call>{"name": ..., "arguments": {...}}
    </tool_call>`` blocks (an unclosed last block is read to the end); the rest is text."""
    calls, errors, doubled = [], [], 0
    for k, match in enumerate(_HERMES.finditer(text)):
        try:
            obj = json.loads(match.group(1))
        except json.JSONDecodeError as exc:
            errors.append(f"<tool_call> block {k} is not JSON ({exc.msg})")
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            errors.append(f"<tool_call> block {k} has no string 'name'")
            continue
        doubled += _checked(calls, errors, f"<tool_call> block {k}", obj["name"],
                            obj.get("arguments", {}))
    return ParsedAnswer(calls, _HERMES.sub("", text).strip(), errors, doubled)


_PYTHON_TAG = "<|python_tag|>"


def parse_llama3_json(text: str) -> ParsedAnswer:
    """Parses Llama 3.1/3.2-style calls: the answer is a JSON object ``{"name": ...,
    "parameters": {...}}`` (``arguments`` read too), optionally after ``<|python_tag|>``, several
    separated by ``;`` or new lines. An answer that opens like JSON but is no such call is a
    syntax error; any other answer is text."""
    body = text.strip()
    tagged = body.startswith(_PYTHON_TAG)
    body = body.removeprefix(_PYTHON_TAG).strip()
    if not body.startswith("{"):
        return ParsedAnswer([], text.strip(), [])
    calls, errors, pos, decoder, doubled, found = [], [], 0, json.JSONDecoder(), 0, 0
    while pos < len(body):
        try:
            obj, end = decoder.raw_decode(body, pos)
        except json.JSONDecodeError as exc:
            errors.append(f"call {found} is not JSON ({exc.msg})")
            break
        args = obj.get("parameters", obj.get("arguments", {})) if isinstance(obj, dict) else None
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            errors.append(f"call {found} has no string 'name'")
            break
        doubled += _checked(calls, errors, f"call {found}", obj["name"], args)
        found += 1
        pos = end
        while pos < len(body) and body[pos] in " \t\r\n;":
            pos += 1
    if not calls and not tagged and not errors:
        return ParsedAnswer([], text.strip(), [])
    return ParsedAnswer(calls, "", errors, doubled)


#: The reasoning syntaxes of the families that write one, as (opening, closing) markers: Qwen3
#: and DeepSeek-R1 ``<think>...</think>``, gpt-oss's analysis channel (its special tokens are
#: kept only where the answer was decoded with them).
REASONING_MARKERS: tuple[tuple[str, str], ...] = (
    ("<think>", "</think>"),
    ("<|channel|>analysis<|message|>", "<|end|>"),
)
_FINAL = re.compile(r"^\s*(?:<\|start\|>assistant)?<\|channel\|>final<\|message\|>")


def split_reasoning(text: str) -> tuple[str | None, str]:
    """Separates a generated answer's reasoning from the answer after it.

    Reads a leading ``<think>...</think>`` block (or gpt-oss's analysis channel); a closing
    marker without its opening one counts too (DeepSeek-R1's generation prompt opens the block
    itself). A block that never closes (generation stopped inside it) is all reasoning: the
    answer is empty.

    Returns:
        (the reasoning, None when the answer has none; the answer after it, stripped).
    """
    body = text.lstrip()
    for opening, closing in REASONING_MARKERS:
        if body.startswith(opening):
            inner = body[len(opening):]
            reasoning, closed, rest = inner.partition(closing)
            if not closed:
                return reasoning.strip(), ""
            return reasoning.strip(), _FINAL.sub("", rest).strip()
        before, closed, rest = body.partition(closing)
        if closed and opening not in before and closing == "</think>":
            return before.strip(), rest.strip()
    return None, text.strip()


PARSERS: dict[str, Callable[[str], ParsedAnswer]] = {
    "task_api": parse_task_api,
    "hermes": parse_hermes,
    "llama3_json": parse_llama3_json,
}


_SYNTAX_COMMENT = re.compile(r"llmops tool syntax:\s*([A-Za-z0-9_]+)")


def syntax_of(chat_template: str | None) -> str | None:
    """Tells which call syntax a chat template writes: the name in its ``llmops tool syntax: NAME``
    comment (the tiny model's template carries one), ``hermes`` for a template that writes
    ``<tool_call>`` blocks (Qwen2.5, Hermes), ``llama3_json`` for one that writes calls as
    ``{"name": ..., "parameters": ...}`` (Llama 3.1, 3.2), else None (it renders no calls)."""
    template = chat_template or ""
    match = _SYNTAX_COMMENT.search(template)
    if match:
        return match.group(1)
    if "<tool_call>" in template:
        return "hermes"
    return "llama3_json" if "\"parameters\": " in template and "tool_call" in template else None


def parse_text(text: str) -> ParsedAnswer:
    """Reads an answer of a model whose template has no call syntax: all of it is text."""
    return ParsedAnswer([], text.strip(), [])


def parser_for(chat_template: str | None) -> Callable[[str], ParsedAnswer]:
    """Returns the parser of the syntax a chat template writes (see ``syntax_of``); ``parse_text``
    when it writes none.

    Raises:
        ValueError: If the template names a syntax no parser reads.
    """
    name = syntax_of(chat_template)
    return parse_text if name is None else get_parser(name)


def get_parser(name: str) -> Callable[[str], ParsedAnswer]:
    """Returns the parser of a call syntax by name.

    Raises:
        ValueError: If the name is unknown (naming the known ones).
    """
    if name not in PARSERS:
        raise ValueError(f"call syntax {name!r} is not one of {', '.join(PARSERS)}.")
    return PARSERS[name]
