"""The rules OpenAI's fine-tuning API sets for a chat training file, checked before anything is
sent. Pure.

From OpenAI's fine-tuning guide and its cookbook's format check (Chat_finetuning_data_prep): a
line is {"messages": [...], "tools"?: [...], "parallel_tool_calls"?: bool}; roles are system,
user, assistant and tool; a message holds only role, content, name, tool_calls, tool_call_id and
weight; an assistant's ``tool_calls`` are {"id", "type": "function", "function": {"name",
"arguments": JSON text}}; a tool message answers an earlier call's id; ``weight`` (0 or 1) is
allowed on assistant messages only; every example trains on at least one assistant message; an
example fits the model's training context; a file holds at least 10 examples. llmops's own
row fields (``meta``, ``label``) are left out of the uploaded line (``upload_row``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

ROLES = ("system", "user", "assistant", "tool")
MESSAGE_KEYS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id", "weight"})
ROW_KEYS = ("messages", "tools", "parallel_tool_calls")
#: The API refuses a training file with fewer examples.
MIN_EXAMPLES = 10


def upload_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """Returns the line uploaded for a row: its messages, tools and parallel_tool_calls only."""
    return {k: row[k] for k in ROW_KEYS if k in row}


def _call_problem(call: Any) -> str | None:
    if not isinstance(call, Mapping):
        return "a tool call must be an object {id, type, function}"
    if not isinstance(call.get("id"), str) or not call["id"]:
        return "a tool call needs a non-empty string 'id'"
    if call.get("type") != "function":
        return f"a tool call's type must be 'function' (got {call.get('type')!r})"
    fn = call.get("function")
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
        return "a tool call needs function.name (a string)"
    args = fn.get("arguments")
    if not isinstance(args, str):
        return "function.arguments must be JSON text (a string), as the API sends it"
    try:
        json.loads(args)
    except json.JSONDecodeError as e:
        return f"function.arguments is not valid JSON ({e.msg})"
    return None


def _message_problems(i: int, m: Any, call_ids: set[str]) -> list[tuple[str, str]]:
    where = f"messages[{i}]"
    if not isinstance(m, Mapping):
        return [("message", f"{where} is not an object")]
    role = m.get("role")
    if role not in ROLES:
        return [("role", f"{where}.role {role!r} is not one of {', '.join(ROLES)}")]
    out: list[tuple[str, str]] = []
    extra = sorted(set(m) - MESSAGE_KEYS)
    if extra:
        fix = " (set data.reasoning=drop: the API trains on no reasoning)" \
            if "reasoning_content" in extra else ""
        out.append(("message_keys", f"{where} ({role}) has keys the API refuses: "
                                    f"{', '.join(extra)}{fix}"))
    content, calls = m.get("content"), m.get("tool_calls")
    if calls is not None and role != "assistant":
        out.append(("tool_calls", f"{where}: only assistant messages carry tool_calls "
                                  f"(a {role} message does)"))
    if role == "assistant" and calls is not None:
        if not isinstance(calls, list) or not calls:
            out.append(("tool_calls", f"{where}.tool_calls must be a non-empty list"))
        else:
            for j, call in enumerate(calls):
                problem = _call_problem(call)
                if problem:
                    out.append(("tool_calls", f"{where}.tool_calls[{j}]: {problem}"))
                elif isinstance(call, Mapping):
                    call_ids.add(call["id"])
    if not (content is None and role == "assistant" and calls) and not isinstance(content, str):
        out.append(("content", f"{where} ({role}): content must be a string"
                               f"{'' if role != 'assistant' else ' (or null with tool_calls)'}"))
    if role == "tool":
        tid = m.get("tool_call_id")
        if not isinstance(tid, str) or tid not in call_ids:
            out.append(("tool_call_id", f"{where}: a tool message must answer an earlier "
                                        f"assistant tool call's id (got {tid!r})"))
    if "weight" in m:
        if role != "assistant":
            out.append(("weight", f"{where}: weight is allowed on assistant messages only "
                                  f"(a {role} message has one)"))
        elif m["weight"] not in (0, 1) or isinstance(m["weight"], bool):
            out.append(("weight", f"{where}.weight must be 0 or 1 (got {m['weight']!r})"))
    return out


def _tools_problem(tools: Any) -> str | None:
    if not isinstance(tools, list):
        return "tools must be a list"
    for j, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, Mapping) else None
        if not isinstance(t, Mapping) or t.get("type") != "function" or \
                not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            return f"tools[{j}] must be {{\"type\": \"function\", \"function\": {{\"name\", ...}}}}"
    return None


def row_problems(row: Any, max_tokens: int, count: Callable[[Mapping[str, Any]], int]
                 ) -> list[tuple[str, str]]:
    """Returns (rule, message) for every rule a row breaks.

    Args:
        row: One row of a split file (llmops's chat form).
        max_tokens: Longest example the API trains on.
        count: Tokens of an example (``llmops.planning.openai_ft.example_tokens``).
    """
    if not isinstance(row, Mapping) or not isinstance(row.get("messages"), list) or \
            not row["messages"]:
        return [("messages", "the line needs a non-empty 'messages' list")]
    out: list[tuple[str, str]] = []
    call_ids: set[str] = set()
    for i, m in enumerate(row["messages"]):
        out += _message_problems(i, m, call_ids)
    trained = [m for m in row["messages"] if isinstance(m, Mapping)
               and m.get("role") == "assistant" and m.get("weight", 1) != 0]
    if not trained:
        out.append(("assistant", "the example has no assistant message to train on (none, or "
                                 "all with weight 0)"))
    if "tools" in row:
        problem = _tools_problem(row["tools"])
        if problem:
            out.append(("tools", problem))
    if not out:
        n = count(row)
        if n > max_tokens:
            out.append(("tokens", f"{n} tokens, above the {max_tokens} an example may hold "
                                  "(train.openai.max_tokens_per_example)"))
    return out


def check_split(rows: Sequence[Any], file: str, max_tokens: int,
                count: Callable[[Mapping[str, Any]], int]) -> list[dict[str, Any]]:
    """Returns one problem per broken rule of every row of a split file, each {"file", "line",
    "row", "source", "rule", "message"} (line: 1-based in the split file; source: where the
    row came from, the data stage's meta file:line)."""
    out = []
    for i, row in enumerate(rows):
        meta = row.get("meta") if isinstance(row, Mapping) else None
        source = f"{meta.get('file') or meta.get('source')}:{meta.get('line')}" \
            if isinstance(meta, Mapping) else None
        for rule, message in row_problems(row, max_tokens, count):
            out.append({"file": file, "line": i + 1, "row": i, "source": source,
                        "rule": rule, "message": message})
    return out


def problem_line(p: Mapping[str, Any]) -> str:
    """Renders one problem: file, line, row, where it came from, the rule and what is wrong."""
    src = f" (from {p['source']})" if p.get("source") else ""
    return f"{p['file']} line {p['line']} (row {p['row']}){src}: rule '{p['rule']}': " \
           f"{p['message']}"
