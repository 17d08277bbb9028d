"""Checks canonical rows before training: tool calls against their schemas, turn order, lengths.

Contract, for the data stage:

    checked = rows.map(functools.partial(check_batch, max_length=..., measure=...),
                       batched=True, with_indices=True, num_proc=...)

``check_batch(batch, indices)`` takes a batch of canonical rows of any kind (``canonical``) and
returns ``{"reject": reasons}``: one ``{"code", "path", "message"}`` or None per row, the first
problem found (a reject the batch already carries is kept); ``prepare.lint`` maps it over a
Dataset and splits off the rejects. What is checked, with its stable code:

- every tool call names a tool the row declares, when it declares any (``unknown_tool``); its
  arguments parse as JSON (``arguments_not_json``), are an object (``arguments_not_object``) and
  validate against the tool's JSON Schema with ``jsonschema``: ``argument_type``,
  ``argument_missing``, ``argument_enum``, ``argument_unknown`` (``additionalProperties: false``),
  ``argument_invalid`` (any other keyword); a tool whose own schema is invalid:
  ``tool_schema_invalid``;
- every ``tool`` message answers an earlier, unanswered call by ``tool_call_id`` (or by ``name``
  when it has no id): ``orphan_tool_message``; roles follow system? → (user → assistant
  [→ tool+ → assistant])*: ``bad_role_order``; the row ends with an assistant turn
  (``no_assistant_end``) that is trained on (``nothing_to_learn``, every weight 0);
- ``content`` null without ``tool_calls`` (``null_content``), an empty turn without calls
  (``empty_content``), a row with no messages or text (``empty_row``), a preference pair whose
  chosen equals its rejected (``same_pair``), and with ``max_length`` a row longer than that in
  the model's tokens (``too_long``, never truncated): ``measure(rows)`` returns the token count
  of each canonical row given (``prepare.chat_token_counter`` builds one from a tokenizer).

Paths are JSON paths inside the canonical row, e.g.
``messages[3].tool_calls[0].function.arguments.due``. Pure Python plus ``jsonschema`` (and
``orjson`` through ``jsontext``); a call that passed once is not checked again (cached by
tools, name and arguments text).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from jsonschema import exceptions as js_exceptions
from jsonschema import validators

from llmops.data import jsontext
from llmops.data.canonical import Rejected

Measure = Callable[[list[dict[str, Any]]], Sequence[int]]
_SCHEMA_CODES = {"type": "argument_type", "required": "argument_missing", "enum":
                 "argument_enum", "additionalProperties": "argument_unknown"}
_NEXT = {None: {"user"}, "system": {"user"}, "user": {"assistant"}, "assistant": {"user"},
         "call": {"tool"}, "tool": {"tool", "assistant"}}


@lru_cache(maxsize=512)
def declared_tools(tools: str | None) -> dict[str, tuple[int, Any]]:
    """Returns ``{name: (index, validator or the schema's error text)}`` for a row's tools JSON."""
    out: dict[str, tuple[int, Any]] = {}
    for i, tool in enumerate(jsontext.loads(tools) if tools else []):
        fn = tool["function"]
        schema = fn.get("parameters") or {"type": "object"}
        try:
            cls = validators.validator_for(schema)
            cls.check_schema(schema)
            out[fn["name"]] = (i, cls(schema))
        except js_exceptions.SchemaError as exc:
            out[fn["name"]] = (i, exc.message)
    return out


def _json_path(base: str, parts: Sequence[Any]) -> str:
    return base + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


def _schema_problem(error: js_exceptions.ValidationError, base: str, tool: str) -> Rejected:
    code = _SCHEMA_CODES.get(str(error.validator), "argument_invalid")
    parts = list(error.absolute_path)
    if code == "argument_missing":
        key = next(k for k in error.validator_value if k not in error.instance)
        return Rejected(code, _json_path(base, [*parts, key]), f"required argument {key!r} of "
                        f"tool {tool!r} is missing. Add it to the call's arguments.")
    if code == "argument_unknown":
        known = set(error.schema.get("properties") or {})
        key = next((k for k in error.instance if k not in known), "?")
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return Rejected(code, _json_path(base, [*parts, key]), f"tool {tool!r} takes no "
                        f"argument {key!r} (allowed: {', '.join(sorted(known))}).{hint} Remove it "
                        "or add it to the schema.")
    if code == "argument_type":
        return Rejected(code, _json_path(base, parts), f"{error.instance!r} is not of type "
                        f"{error.validator_value!r}, as tool {tool!r} requires. Fix the value.")
    if code == "argument_enum":
        allowed = ", ".join(repr(v) for v in error.validator_value)
        return Rejected(code, _json_path(base, parts), f"{error.instance!r} is not one of "
                        f"{allowed} (tool {tool!r}). Use one of them.")
    return Rejected(code, _json_path(base, parts), f"{error.message} (tool {tool!r}, schema "
                    f"keyword {error.validator!r}). Fix the argument.")


def check_call(call: Mapping[str, Any], path: str, tools: str | None) -> None:
    """Checks one canonical tool call against the row's tools.

    Raises:
        Rejected: With the first problem (see the module docstring).
    """
    name, text = call["function"]["name"], call["function"]["arguments"]
    if not _passes(tools, name, text):
        _check_call(name, text, path, tools)


@lru_cache(maxsize=1 << 16)
def _passes(tools: str | None, name: str, text: str) -> bool:
    """Says whether a call passes ``check_call``; cached, as rows repeat calls and schemas."""
    try:
        _check_call(name, text, "", tools)
    except Rejected:
        return False
    return True


def _check_call(name: str, text: str, path: str, tools: str | None) -> None:
    declared = declared_tools(tools)
    if declared and name not in declared:
        close = difflib.get_close_matches(name, declared, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise Rejected("unknown_tool", f"{path}.function.name", f"{name!r} is not a tool the "
                       f"row declares ({', '.join(declared)}).{hint} Fix the name or declare it.")
    base = f"{path}.function.arguments"
    try:
        args = jsontext.loads(text)
    except json.JSONDecodeError as exc:
        raise Rejected("arguments_not_json", base, f"{text[:60]!r} is not JSON ({exc.msg} at "
                       f"column {exc.colno}). Write the arguments as a JSON object.") from exc
    if not isinstance(args, dict):
        raise Rejected("arguments_not_object", base, f"must be a JSON object (got "
                       f"{type(args).__name__}). Wrap the values in {{...}} by name.")
    if name not in declared:
        return
    index, validator = declared[name]
    if isinstance(validator, str):
        raise Rejected("tool_schema_invalid", f"tools[{index}].function.parameters",
                       f"is not a valid JSON Schema ({validator}). Fix the tool's schema.")
    error = js_exceptions.best_match(validator.iter_errors(args))
    if error is not None:
        raise _schema_problem(error, base, name)


def check_messages(messages: Sequence[Mapping[str, Any]], tools: str | None,
                   where: str = "messages") -> None:
    """Checks a canonical message list: calls, answers, order, contents, the final turn.

    Raises:
        Rejected: With the first problem (see the module docstring).
    """
    if not messages:
        raise Rejected("empty_row", where, "has no messages. Drop the row or fill it.")
    pending: dict[str | None, str] = {}
    state = None
    for i, m in enumerate(messages):
        path, role, calls = f"{where}[{i}]", m["role"], m.get("tool_calls")
        if role not in _NEXT[state] and not (role == "system" and i == 0):
            after = f"after {state!r}" if state else "first"
            allowed = " or ".join(sorted(_NEXT[state]))
            raise Rejected("bad_role_order", f"{path}.role", f"{role!r} may not come {after} "
                           f"(expected {allowed}). Reorder or merge the turns.")
        if m["content"] is None and not calls:
            raise Rejected("null_content", f"{path}.content", "is null but the message has no "
                           "tool_calls. Give it text or calls.")
        if not calls and not (m["content"] or "").strip():
            raise Rejected("empty_content", f"{path}.content", f"the {role} turn is empty. "
                           "Fill it or drop the turn.")
        for k, call in enumerate(calls or []):
            check_call(call, f"{path}.tool_calls[{k}]", tools)
            pending[call["id"]] = call["function"]["name"]
        if role == "tool":
            _answer(m, path, pending)
        state = "call" if calls else role
    if messages[-1]["role"] != "assistant":
        raise Rejected("no_assistant_end", f"{where}[{len(messages) - 1}].role", "the last turn "
                       f"is {messages[-1]['role']!r}; a row must end with an assistant turn to "
                       "learn. Add the answer or drop the row.")
    if all(m.get("weight") == 0 for m in messages if m["role"] == "assistant"):
        raise Rejected("nothing_to_learn", where, "every assistant turn has weight 0. Set "
                       "weight 1 on the turns to learn.")


def _answer(m: Mapping[str, Any], path: str, pending: dict[str | None, str]) -> None:
    ident, name = m.get("tool_call_id"), m.get("name")
    if ident is not None and ident in pending:
        del pending[ident]
        return
    if ident is None and name is not None:
        match = next((k for k, v in pending.items() if v == name), ...)
        if match is not ...:
            del pending[match]
            return
    key = "tool_call_id" if ident is not None or name is None else "name"
    open_ids = ", ".join(str(k) for k in pending) or "none"
    raise Rejected("orphan_tool_message", f"{path}.{key}", f"{ident or name!r} answers no "
                   f"earlier call (unanswered call ids: {open_ids}). Point it at its call's id.")


def check_row(row: Mapping[str, Any]) -> None:
    """Checks one canonical row of any kind (without its length).

    Raises:
        Rejected: With the first problem.
    """
    if "text" in row:
        if not (row["text"] or "").strip():
            raise Rejected("empty_row", "text", "is empty. Drop the row or fill it.")
        return
    if "messages" in row:
        check_messages(row["messages"], row.get("tools"))
        return
    prompt = row["prompt"] or []
    check_messages([*prompt, *(row["chosen"] or [])], row.get("tools"), "prompt+chosen")
    if not row["rejected"] or row["rejected"][-1]["role"] != "assistant":
        raise Rejected("no_assistant_end", "rejected", "must end with an assistant turn.")
    if row["rejected"] == row["chosen"]:
        raise Rejected("same_pair", "rejected", "equals chosen; the pair teaches nothing. "
                       "Give a worse answer or drop the pair.")


def check_batch(batch: Mapping[str, list], indices: Sequence[int], max_length: int | None = None,
                measure: Measure | None = None) -> dict[str, list]:
    """Returns ``{"reject": [...]}`` for a batch of canonical rows (see the module docstring)."""
    names = [k for k in batch if k not in ("meta", "reject")]
    columns = [batch[k] for k in names]
    rows = [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]
    reasons = list(batch.get("reject") or [None] * len(indices))
    return {"reject": check_rows(rows, reasons, max_length, measure)}


def check_rows(rows: Sequence[Mapping[str, Any]], reasons: list[dict[str, str] | None],
               max_length: int | None = None, measure: Measure | None = None
               ) -> list[dict[str, str] | None]:
    """Checks canonical rows (``check_batch`` on rows already built); fills ``reasons`` (None
    where a row has no reject yet) and returns it."""
    for i, row in enumerate(rows):
        if reasons[i] is None:
            try:
                check_row(row)
            except Rejected as exc:
                reasons[i] = exc.to_dict()
    if max_length is not None and measure is not None:
        todo = [i for i, r in enumerate(reasons) if r is None]
        for i, n in zip(todo, measure([rows[i] for i in todo]), strict=True):
            if n > max_length:
                reasons[i] = Rejected("too_long", "$", f"{n} tokens > data.max_length="
                                      f"{max_length}. Raise data.max_length or shorten the "
                                      "row; it is not truncated.").to_dict()
    return reasons
