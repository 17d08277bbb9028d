"""Generates the bundled Task-API tool-calling dataset in OpenAI's chat form, and reads answers.

The Task-API is a made-up to-do service with five tools (``TOOL_SCHEMAS``: JSON Schemas of their
arguments, with types, required keys and enums). Each row declares those tools (row-level
``tools``) and is a short chat: a one-line system prompt, a user request, and the assistant's
answer, which is either one ``tool_calls`` entry (``{"id", "type": "function", "function": {"name",
"arguments": JSON text}}``, ``content`` null) or the fixed refusal sentence for requests outside
the tools. Every argument value appears literally in the user's request, so a model has to read the
request to answer it; the vocabulary stays small (a few dozen words) so a tiny model with a
512-token BPE vocabulary can learn it. How a model sees a call is its chat template's business (the
tiny model's: ``{"tool":NAME,"arguments":{...}}``, see ``format_call``).

Pure Python and deterministic for a seed: the tiny model's tokenizer, its pre-training and the
``data`` stage all import this module.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from typing import Any

TOOLS: tuple[str, ...] = (
    "create_task",
    "list_tasks",
    "update_task",
    "complete_task",
    "delete_task",
)

_PRIORITY = {"type": "string", "enum": ["low", "medium", "high"], "description": "Urgency."}
_DUE = {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$", "description": "YYYY-MM-DD."}
_TITLE = {"type": "string", "minLength": 1, "description": "What to do."}
_TASK_ID = {"type": "integer", "minimum": 1, "description": "The task's number."}


def _tool(name: str, description: str, properties: dict[str, Any], required: list[str],
          **extra: Any) -> dict[str, Any]:
    parameters = {"type": "object", "properties": properties, "required": required,
                  "additionalProperties": False, **extra}
    return {"type": "function",
            "function": {"name": name, "description": description, "parameters": parameters}}


TOOL_SCHEMAS: list[dict[str, Any]] = [
    _tool("create_task", "Adds a task.", {"title": _TITLE, "due": _DUE, "priority": _PRIORITY},
          ["title"]),
    _tool("list_tasks", "Lists tasks, optionally filtered.",
          {"status": {"type": "string", "enum": ["open", "done"]}, "priority": _PRIORITY}, []),
    _tool("update_task", "Changes one field of a task.",
          {"task_id": _TASK_ID, "title": _TITLE, "due": _DUE, "priority": _PRIORITY},
          ["task_id"], minProperties=2),
    _tool("complete_task", "Marks a task as done.", {"task_id": _TASK_ID}, ["task_id"]),
    _tool("delete_task", "Deletes a task.", {"task_id": _TASK_ID}, ["task_id"]),
]
"""The row-level ``tools`` of every Task-API row, in OpenAI's form, in the order of ``TOOLS``."""
_TOOLS_JSON = json.dumps(TOOL_SCHEMAS)

SYSTEM_PROMPT: str = (
    "You are Task-API. Answer with one JSON tool call, or refuse requests outside the task tools."
)

REFUSAL: str = "I can't help with that. I can only create, list, update, complete or delete tasks."

SOURCE = "task_api"

# fmt: off
_TITLES = (
    "buy milk", "buy bread", "call mom", "call the bank", "pay rent", "pay the gas bill",
    "book a dentist visit", "write the report", "clean the kitchen", "fix the bike",
    "walk the dog", "water the plants", "plan the trip", "read a book", "review the code",
    "renew my passport", "wash the car", "cook dinner", "study math", "update the budget",
    "visit grandma", "feed the cat", "take out the trash", "finish the slides",
)
# fmt: on
_PRIORITIES = ("low", "medium", "high")
_STATUSES = ("open", "done")
_PEOPLE = ("Alice", "Bob", "Carol", "Dave", "Eve", "Frank")
_CITIES = ("Paris", "London", "Tokyo", "Berlin", "Rome", "Madrid")
_THINGS = ("cats", "the sea", "my boss", "the moon", "pizza", "football")
_PREFIXES = ("", "", "Please ", "Hey, ", "Can you ", "Could you ", "I need you to ", "Now ")
_QUESTION_PREFIXES = ("Can you ", "Could you ")


def _date(rng: random.Random) -> str:
    return f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _task_id(rng: random.Random) -> int:
    return rng.randint(1, 99) if rng.random() < 0.7 else rng.randint(100, 999)


def _sentence(rng: random.Random, body: str) -> str:
    """Prepends a random politeness prefix and ends the request with a period or question mark."""
    prefix = rng.choice(_PREFIXES)
    text = prefix + body if prefix else body[0].upper() + body[1:]
    return text + ("?" if prefix in _QUESTION_PREFIXES else ".")


def _create(rng: random.Random) -> tuple[str, dict[str, Any]]:
    title = rng.choice(_TITLES)
    args: dict[str, Any] = {"title": title}
    body = rng.choice(
        (
            "add a task to {t}",
            "create a task: {t}",
            "remind me to {t}",
            "put '{t}' on my list",
            "add '{t}' to my tasks",
        )
    ).format(t=title)
    extras = rng.choice(("none", "due", "priority", "both"))
    if extras in ("due", "both"):
        due = _date(rng)
        args["due"] = due
        body += rng.choice((" due {d}", " by {d}", ", due on {d}")).format(d=due)
    if extras in ("priority", "both"):
        priority = rng.choice(_PRIORITIES)
        args["priority"] = priority
        body += rng.choice((" with {p} priority", ", priority {p}", " as {p} priority")).format(
            p=priority
        )
    return _sentence(rng, body), args


def _list(rng: random.Random) -> tuple[str, dict[str, Any]]:
    status, priority = rng.choice(_STATUSES), rng.choice(_PRIORITIES)
    kind = rng.choice(("all", "status", "priority", "both"))
    if kind == "all":
        body = rng.choice(
            ("show my tasks", "list all my tasks", "show my list", "list everything on my list")
        )
        return _sentence(rng, body), {}
    if kind == "status":
        body = rng.choice(
            ("list my {s} tasks", "show tasks that are {s}", "show my {s} tasks", "list {s} tasks")
        )
        return _sentence(rng, body.format(s=status)), {"status": status}
    if kind == "priority":
        body = rng.choice(
            (
                "list my {p} priority tasks",
                "show tasks with {p} priority",
                "show {p} priority tasks",
                "list tasks that are {p} priority",
            )
        )
        return _sentence(rng, body.format(p=priority)), {"priority": priority}
    body = rng.choice(
        (
            "list my {s} tasks with {p} priority",
            "show {s} tasks that are {p} priority",
            "show my {p} priority tasks that are {s}",
        )
    )
    return _sentence(rng, body.format(s=status, p=priority)), {
        "status": status,
        "priority": priority,
    }


def _update(rng: random.Random) -> tuple[str, dict[str, Any]]:
    task_id = _task_id(rng)
    field = rng.choice(("title", "due", "priority"))
    if field == "title":
        value: str = rng.choice(_TITLES)
        body = rng.choice(("rename task {i} to '{v}'", "change the title of task {i} to '{v}'"))
    elif field == "due":
        value = _date(rng)
        body = rng.choice(("move task {i} to {v}", "change the due date of task {i} to {v}"))
    else:
        value = rng.choice(_PRIORITIES)
        body = rng.choice(
            ("set task {i} to {v} priority", "change the priority of task {i} to {v}")
        )
    return _sentence(rng, body.format(i=task_id, v=value)), {"task_id": task_id, field: value}


def _complete(rng: random.Random) -> tuple[str, dict[str, Any]]:
    task_id = _task_id(rng)
    body = rng.choice(
        (
            "mark task {i} as done",
            "complete task {i}",
            "check off task {i}",
            "close task {i}, it is finished",
        )
    )
    return _sentence(rng, body.format(i=task_id)), {"task_id": task_id}


def _delete(rng: random.Random) -> tuple[str, dict[str, Any]]:
    task_id = _task_id(rng)
    body = rng.choice(
        ("delete task {i}", "remove task {i} from my list", "get rid of task {i}", "drop task {i}")
    )
    return _sentence(rng, body.format(i=task_id)), {"task_id": task_id}


_REFUSALS = (
    "send an email to {p}",
    "tell me the weather in {c}",
    "delete every user's account",
    "show me {p}'s password",
    "book a flight to {c}",
    "write a poem about {x}",
    "give me the admin password",
    "send money to {p}",
    "read {p}'s private messages",
    "delete all tasks of every user",
    "tell me a joke about {x}",
    "find the home address of {p}",
    "order {x} for dinner",
    "hack into {p}'s account",
)

_BUILDERS: dict[str, Callable[[random.Random], tuple[str, dict[str, Any]]]] = {
    "create_task": _create,
    "list_tasks": _list,
    "update_task": _update,
    "complete_task": _complete,
    "delete_task": _delete,
}


def _refusal_request(rng: random.Random) -> str:
    body = rng.choice(_REFUSALS).format(
        p=rng.choice(_PEOPLE), c=rng.choice(_CITIES), x=rng.choice(_THINGS)
    )
    return _sentence(rng, body)


def format_call(tool: str, arguments: dict[str, Any], schema: str = "v2") -> str:
    """Renders a tool call as compact JSON with ``tool`` first, then ``arguments``.

    "v2" is how the tiny model's chat template writes a ``tool_calls`` entry. Schema "v1" is the
    Task-API's legacy wire format, ``{"action": ..., "params": ...}``: the tiny base model is
    pre-trained on it for some tools, so fine-tuning has a real migration to learn.
    """
    if schema == "v1":
        return json.dumps({"action": tool, "params": arguments}, separators=(",", ":"))
    return json.dumps({"tool": tool, "arguments": arguments}, separators=(",", ":"))


def tool_call(tool: str, arguments: dict[str, Any], call_id: str) -> dict[str, Any]:
    """Returns one OpenAI ``tool_calls`` entry; the arguments become compact JSON text."""
    return {"id": call_id, "type": "function",
            "function": {"name": tool, "arguments": json.dumps(arguments, separators=(",", ":"))}}


def _row(user: str, tool: str | None, arguments: dict[str, Any] | None, legacy: bool,
         call_id: str) -> dict[str, Any]:
    if tool is None:
        answer: dict[str, Any] = {"role": "assistant", "content": REFUSAL}
        kind = "refusal"
    elif legacy:  # the legacy API's calls were plain text in the v1 schema
        answer = {"role": "assistant", "content": format_call(tool, arguments or {}, "v1")}
        kind = "legacy_call"
    else:
        answer = {"role": "assistant", "content": None,
                  "tool_calls": [tool_call(tool, arguments or {}, call_id)]}
        kind = "tool_call"
    return {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user},
            answer,
        ],
        "tools": json.loads(_TOOLS_JSON),  # a copy per row: a caller may edit its rows
        "meta": {"source": SOURCE, "kind": kind, "tool": tool, "refuse": tool is None},
    }


def generate(
    n: int,
    seed: int,
    tools: Sequence[str] | None = None,
    include_refusals: bool = True,
    refusal_fraction: float = 0.15,
    legacy_tools: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Generates ``n`` Task-API chat rows, the same rows for the same arguments.

    Refusals make up ``round(n * refusal_fraction)`` rows (when ``include_refusals``); the rest is
    spread evenly over ``tools`` in turn, so every tool appears once ``n`` is large enough. User
    requests are unique while the template space allows it (a few thousand per tool). The rows
    come back shuffled.

    Args:
        n: Number of rows, ≥ 0.
        seed: Seed for the private random generator (the global ``random`` state is untouched).
        tools: Tools to draw calls from, a subset of ``TOOLS``; None means all of them.
        include_refusals: Whether to add out-of-scope requests answered with ``REFUSAL``.
        refusal_fraction: Share of refusal rows, in [0, 1].
        legacy_tools: Tools whose calls are written as text in the legacy v1 schema (see
            format_call) instead of ``tool_calls``: what the tiny base is pre-trained on.

    Returns:
        OpenAI rows ``{"messages": [system, user, assistant], "tools": TOOL_SCHEMAS, "meta":
        {"source", "kind", "tool", "refuse"}}``; ``meta.kind`` is ``tool_call``, ``refusal`` or
        ``legacy_call``; ``meta.tool`` is None for refusals.

    Raises:
        ValueError: If ``n`` is negative, a tool is unknown, ``tools`` is empty while calls are
            needed, or ``refusal_fraction`` is outside [0, 1].
    """
    if n < 0:
        raise ValueError(f"n: must be ≥ 0 (got {n}).")
    if not 0.0 <= refusal_fraction <= 1.0:
        raise ValueError(f"refusal_fraction: must be in [0, 1] (got {refusal_fraction}).")
    chosen = tuple(TOOLS if tools is None else tools)
    unknown = [t for t in chosen if t not in TOOLS]
    if unknown:
        raise ValueError(f"tools: {unknown} not in {', '.join(TOOLS)}.")
    n_refusals = round(n * refusal_fraction) if include_refusals else 0
    if n_refusals < n and not chosen:
        raise ValueError("tools: empty, but calls are needed. Name at least one tool.")

    rng = random.Random(seed)
    seen: set[str] = set()

    def unique(draw: Callable[[], tuple[str, Any]]) -> tuple[str, Any]:
        for _ in range(50):
            user, payload = draw()
            if user not in seen:
                break
        seen.add(user)
        return user, payload

    rows = []
    for i in range(n - n_refusals):
        tool = chosen[i % len(chosen)]
        user, args = unique(lambda tool=tool: _BUILDERS[tool](rng))
        rows.append(_row(user, tool, args, tool in legacy_tools, f"call_{i}"))
    for _ in range(n_refusals):
        user, _ = unique(lambda: (_refusal_request(rng), None))
        rows.append(_row(user, None, None, False, ""))
    rng.shuffle(rows)
    return rows


def parse_call(text: str) -> dict[str, Any] | None:
    """Parses an assistant answer as a tool call.

    Args:
        text: The answer; surrounding whitespace is ignored, anything else around the JSON is not.

    Returns:
        The parsed object when ``text`` is a JSON object with a string ``"tool"``, else None.
    """
    try:
        stripped = text.strip()
        if isinstance(stripped, str) and not stripped.startswith("{"):  # cannot be an object
            return None
        obj = json.loads(stripped)
    except (json.JSONDecodeError, TypeError, AttributeError):
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("tool"), str):
        return None
    return obj


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("’", "'")).strip().lower()


_REFUSAL_NORM = _norm(REFUSAL)


def is_refusal(text: str) -> bool:
    """Tells whether an answer declines the request.

    True for ``REFUSAL`` itself (case, spacing and curly apostrophes ignored) and for any non-call
    answer that opens with "I can't"/"I cannot"/"I can not"/"Sorry", so a model that words its
    refusal slightly differently still counts as refusing.
    """
    norm = _norm(text)
    if norm == _REFUSAL_NORM:
        return True
    if parse_call(text) is not None:
        return False
    return norm.startswith(("i can't", "i cannot", "i can not", "sorry"))
