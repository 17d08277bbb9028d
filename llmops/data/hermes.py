"""Lifts Hermes-style tool calling out of the text into canonical calls, tools and tool turns.

Hermes function-calling rows (NousResearch's sets, and the many built on their prompt) carry
tool use inside the text: the system turn declares the tools in ``<tools>...</tools>`` (a JSON
or Python-literal list of function schemas, or one schema per line), an assistant turn calls in
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks (JSON, or a Python dict as
``{'arguments': {...}, 'name': ...}``), and a ``tool`` turn answers in
``<tool_response>...</tool_response>`` blocks. ``lift`` turns those into the canonical row:
the system turn keeps its text without the ``<tools>`` block, the tools go to the row's
``tools``, each call to the assistant turn's ``tool_calls`` (its text outside the blocks stays
the content), and each response to a ``tool`` message answering the oldest unanswered call (the
one it names, when it names one).

Lifted text is untrusted: a block that does not parse, one nested deeper than
``limits.json_depth``, a Python literal over ``LITERAL_CHARS``, a call without a name, or an
unclosed tag is one reject with its code
(``hermes_tools``, ``tool_call_not_parsed``, ``too_deep``, ``unclosed_tag``); the calls kept are
checked against the tools like any call (``toolcheck``). Pure Python.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from llmops.data import canonical as c
from llmops.data import jsontext

_TOOLS = re.compile(r"<tools>(.*?)</tools>", re.DOTALL)
_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_RESPONSE = re.compile(r"<tool_response>(.*?)</tool_response>", re.DOTALL)
#: Python's own parser recurses per level: literals deeper than this are refused before it.
LITERAL_DEPTH = 100
#: Python's parser holds a literal's whole syntax tree (tens of bytes a character): text that is
#: not JSON and longer than this is refused, not parsed.
LITERAL_CHARS = 1 << 20


def has_markup(text: Any) -> bool:
    """Tells whether a text holds Hermes tool markup (for ``data.format=auto``)."""
    return isinstance(text, str) and ("<tool_call>" in text or "<tools>" in text)


def parse_value(text: str, path: str, code: str, max_depth: int | None) -> Any:
    """Parses JSON text, or else a Python literal (``{'name': ..., 'arguments': {...}}``, which
    Hermes sets print with Python's ``repr``), within ``max_depth`` levels of nesting.

    Raises:
        canonical.Rejected: ``too_deep`` past the bound, else ``code`` when neither parses.
    """
    text = text.strip()
    depth = min(max_depth or LITERAL_DEPTH, LITERAL_DEPTH)
    if jsontext.too_deep(text, depth):
        raise c.Rejected("too_deep", path, f"holds text nested deeper than {depth} levels; it is "
                         "not parsed. Flatten it.")
    try:
        return jsontext.loads(text)
    except (ValueError, jsontext.TooDeep):
        pass
    if len(text) > LITERAL_CHARS:
        raise c.Rejected(code, path, f"holds {len(text)} characters that are not JSON; Python "
                         f"literals longer than {LITERAL_CHARS} are not parsed. Write it as JSON.")
    try:
        value = ast.literal_eval(text)
        json.dumps(value)  # a set, bytes or tuple key: a Python value JSON cannot hold
        return value
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        raise c.Rejected(code, path, f"holds {text[:80]!r}, which is neither JSON nor a Python "
                         f"literal of JSON values ({type(exc).__name__}). Write it as JSON, e.g. "
                         '{"name": "get_weather", "arguments": {"city": "Paris"}}.') from None


def _tools(text: str, path: str, max_depth: int | None) -> list[Any]:
    body = text.strip()
    if not body:
        return []
    try:
        value = parse_value(body, path, "hermes_tools", max_depth)
    except c.Rejected as first:  # one schema per line (Qwen's own prompt writes them so)
        lines = [line for line in body.splitlines() if line.strip()]
        if len(lines) < 2:
            raise first from None
        value = [parse_value(line, path, "hermes_tools", max_depth) for line in lines]
    value = value if isinstance(value, list) else [value]
    return [{"type": "function", "function": v} if isinstance(v, dict) and "function" not in v
            else v for v in value]


def _unclosed(text: str, tag: str, path: str) -> None:
    if text.count(f"<{tag}>") != text.count(f"</{tag}>"):
        raise c.Rejected("unclosed_tag", path, f"opens <{tag}> {text.count(f'<{tag}>')} times "
                         f"but closes it {text.count(f'</{tag}>')} times. Close each block.")


def _calls(text: str, path: str, turn: int, max_depth: int | None) -> list[dict[str, Any]]:
    calls = []
    for k, block in enumerate(_CALL.findall(text)):
        value = parse_value(block, f"{path}<tool_call {k}>", "tool_call_not_parsed", max_depth)
        if isinstance(value, dict) and isinstance(value.get("arguments"), str):
            value = {**value, "arguments": value["arguments"]}
        if isinstance(value, dict) and "parameters" in value and "arguments" not in value:
            value = {**{k2: v for k2, v in value.items() if k2 != "parameters"},
                     "arguments": value["parameters"]}
        calls.append(c.tool_call(value, f"{path}<tool_call {k}>", f"call_{turn}_{k}"))
    return calls


def _rest(text: str, pattern: re.Pattern[str]) -> str | None:
    """Returns the text without the pattern's blocks (an empty one, as in "within <tools>
    </tools> XML tags", is prose and stays), stripped; None when nothing is left."""
    rest = pattern.sub(lambda m: m[0] if not m[1].strip() else "", text).strip()
    return rest or None


def lift(messages: list[dict[str, Any]], path: str, tools: str | None,
         max_depth: int | None) -> dict[str, Any]:
    """Returns ``{"messages", "tools"}`` with Hermes markup lifted (see the module docstring).

    Args:
        messages: Canonical messages read from the row (their text still holds the markup).
        path: The messages' column, for reject paths.
        tools: The row's own ``tools`` (canonical JSON text) when it has a tools column; tools
            in the system turn are added to them.
        max_depth: ``limits.json_depth``.

    Raises:
        canonical.Rejected: For markup that does not parse (see the module docstring).
    """
    declared: list[Any] = json.loads(tools) if tools else []
    out: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        where = f"{path}[{i}].content"
        text = m["content"]
        if not isinstance(text, str):
            out.append(m)
            if m["tool_calls"]:
                pending.extend(m["tool_calls"])
            continue
        if m["role"] == "system" and "<tools>" in text:
            _unclosed(text, "tools", where)
            for block in _TOOLS.findall(text):
                declared += _tools(block, where, max_depth)
            out.append({**m, "content": _rest(text, _TOOLS) or ""})
        elif m["role"] == "assistant" and "<tool_call>" in text:
            _unclosed(text, "tool_call", where)
            calls = _calls(text, where, i, max_depth)
            pending.extend(calls)
            out.append({**m, "content": _rest(text, _CALL),
                        "tool_calls": [*(m["tool_calls"] or []), *calls]})
        elif m["role"] == "assistant" and m["tool_calls"]:
            pending.extend(m["tool_calls"])
            out.append(m)
        elif m["role"] in ("tool", "user") and "<tool_response>" in text and (
                m["role"] == "tool" or pending):
            _unclosed(text, "tool_response", where)
            for block in _RESPONSE.findall(text):
                out.append(_answer(block.strip(), pending, m))
        elif m["role"] == "tool" and m["tool_call_id"] is None and pending:
            out.append(_answer(text, pending, m))
        else:
            out.append(m)
    seen: set[Any] = set()
    unique = []  # a tools column and the system turn often declare the same tools
    for tool in declared:
        name = (tool.get("function") or tool).get("name") if isinstance(tool, dict) else None
        if name is None or name not in seen:
            unique.append(tool)
            seen.add(name)
    return {"messages": out, "tools": c.tools_json(unique, f"{path}<tools>", max_depth)
            if unique else None}


def _answer(text: str, pending: list[dict[str, Any]], m: dict[str, Any]) -> dict[str, Any]:
    """Returns a tool message answering the call the response names, else the oldest one."""
    named = None
    if text.startswith("{"):
        try:
            value = jsontext.loads(text, 8)
            named = value.get("name") if isinstance(value, dict) else None
        except (ValueError, jsontext.TooDeep):
            named = None
    call = next((x for x in pending if x["function"]["name"] == named), None) or (
        pending[0] if pending else None)
    if call is not None:
        pending.remove(call)
    return c.message("tool", text, None, call and call["id"], call and call["function"]["name"],
                     m["weight"])
