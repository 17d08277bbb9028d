"""Converts ShareGPT conversations (``{"from", "value"}`` turns) to canonical messages.

Roles: ``human`` → user, ``gpt`` → assistant, ``system`` → system, ``function_call`` → an
assistant message whose ``tool_calls`` come from the turn's JSON (``{"name", "arguments"}`` or a
list of them), ``observation`` → a ``tool`` message. ShareGPT has no call ids: calls get
``call_<turn>_<k>`` and each observation answers the oldest unanswered call (its id and name),
so parallel calls answered in order link up. A ``tool`` turn (Hermes' name) is an observation
unless ``tags`` name another role ``tool``. A turn's value may be text or content parts; an
assistant turn's reasoning comes from its ``reasoning_content`` / ``reasoning`` key, reasoning
parts or a leading ``<think>`` block (``convert.assistant_parts``). Key and role names can be
renamed with ``tags`` (keys of ``convert.DEFAULT_TAGS``). Pure Python.
"""

from __future__ import annotations

import json
from typing import Any

from llmops.data import canonical as c
from llmops.data.names import TAG_ROLES
from llmops.data.parts import assistant_parts, note_unused


def _calls(value: Any, where: str, turn: int) -> list[dict[str, Any]]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise c.Rejected(
                "function_call_not_json",
                where,
                f"a function_call turn must hold the call as JSON ({exc.msg} at column "
                f'{exc.colno}). Write {{"name": ..., "arguments": {{...}}}}.',
            ) from exc
    calls = value if isinstance(value, list) else [value]
    return [c.tool_call(x, where, f"call_{turn}_{k}") for k, x in enumerate(calls)]


def sharegpt_to_messages(
    turns: Any, path: str, tags: dict[str, str], pending: list[dict] | None = None,
    unused: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Converts a ShareGPT turn list to canonical messages.

    Args:
        turns: The ``conversations`` value.
        path: Its column name, for reject paths (``conversations[3].value``).
        tags: Key and role names (``convert.DEFAULT_TAGS`` with overrides).
        pending: Calls not yet answered, carried over from earlier turns (updated in place).
        unused: Filled with the turn keys not read (``conversations[].KEY``: a first value).

    Raises:
        canonical.Rejected: If a turn is not an object, has an unknown role or no text value.
    """
    if not isinstance(turns, list):
        kind = "null" if turns is None else type(turns).__name__
        raise c.Rejected("bad_messages", path, f"must be a list of turns (got {kind}).")
    by_tag = {tags[name]: name for name in TAG_ROLES}
    by_tag.setdefault("tool", "observation")
    known = {tags["role"], tags["content"], "weight", "reasoning_content", "reasoning"}
    pending = [] if pending is None else pending
    out = []
    for i, turn in enumerate(turns):
        where = f"{path}[{i}]"
        if not isinstance(turn, dict):
            raise c.Rejected("bad_message", where,
                             f"must be an object with '{tags['role']}' and '{tags['content']}'.")
        tag, value = turn.get(tags["role"]), turn.get(tags["content"])
        name = by_tag.get(tag) if isinstance(tag, str) else None
        if unused is not None and len(turn) > 2:
            for key in turn:
                if key not in known:
                    note_unused(unused, f"{path}[].{key}", turn[key])
        if name is None:
            raise c.Rejected(
                "unknown_role", f"{where}.{tags['role']}",
                f"{tag!r} is not one of {', '.join(by_tag)}. Map it with data.tags "
                f"(e.g. data.tags.user={tag}).",
            )
        if name == "function_call":
            calls = _calls(value, f"{where}.{tags['content']}", i)
            pending.extend(calls)
            out.append(c.message("assistant", None, calls))
            continue
        role = TAG_ROLES[name]
        reasoning = turn.get("reasoning_content", turn.get("reasoning"))
        text, trace, calls = assistant_parts(role, value, where, i, reasoning,
                                             tags["content"])
        weight = c.weight(turn.get("weight"), f"{where}.weight")
        if name == "observation":
            call = pending.pop(0) if pending else None
            out.append(c.message("tool", text, None, call and call["id"],
                                 call and call["function"]["name"]))
        else:
            pending.extend(calls)
            out.append(c.message(role, text, list(calls) or None, weight=weight,
                                 reasoning_content=trace))
    return out


def _answer(value: Any, col: str, tags: dict[str, str]) -> list[dict[str, Any]]:
    if isinstance(value, str) and value.strip():
        return [c.message("assistant", value)]
    if isinstance(value, dict):
        return sharegpt_to_messages([value], col, tags)
    raise c.Rejected("bad_field", col, f"must be a {tags['content']!r} turn or a non-empty string.")


def sharegpt_preference(
    system: list[dict[str, Any]],
    turns: Any,
    path: str,
    chosen: Any,
    rejected: Any,
    cols: tuple[str, str],
    tags: dict[str, str],
) -> tuple[list[dict], list[dict], list[dict]]:
    """Converts a ShareGPT preference row: prompt turns plus one chosen and one rejected turn."""
    prompt = system + sharegpt_to_messages(turns, path, tags)
    return prompt, _answer(chosen, cols[0], tags), _answer(rejected, cols[1], tags)
