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

A tool's schema is data: a ``$ref`` resolves only inside that schema (``#/...``); any other
reference (``http://``, ``file://``, another file) is never fetched or read, and it, a reference
to nothing or a reference cycle is ``tool_schema_ref``. ``pattern`` and ``patternProperties``
run on the ``regex`` package with a time limit: a row's pattern checks together take at most
``limits.pattern_seconds`` (``pattern_timeout`` past it). Arguments given as JSON text nested
deeper than ``limits.json_depth`` are ``too_deep``.

Paths are JSON paths inside the canonical row, e.g.
``messages[3].tool_calls[0].function.arguments.due``. Pure Python plus ``jsonschema`` (and
``orjson`` through ``jsontext``); a call that passed once is not checked again (cached by
tools, name and arguments text).
"""

from __future__ import annotations

import difflib
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import regex
from jsonschema import exceptions as js_exceptions
from jsonschema import validators
from referencing import Registry
from referencing import exceptions as ref_exceptions

from llmops.data import jsontext
from llmops.data.canonical import Rejected
from llmops.data.limits import Limits

Measure = Callable[[list[dict[str, Any]]], Sequence[int]]
_SCHEMA_CODES = {"type": "argument_type", "required": "argument_missing", "enum":
                 "argument_enum", "additionalProperties": "argument_unknown"}
_NEXT = {None: {"user"}, "system": {"user"}, "user": {"assistant"}, "assistant": {"user"},
         "call": {"tool"}, "tool": {"tool", "assistant"}}


class PatternTimeout(Exception):
    """A schema pattern took longer than the row's time for its pattern checks."""

    def __init__(self, pattern: str):
        super().__init__(pattern)
        self.pattern = pattern


_DEADLINE = threading.local()  # .at: time.monotonic() by which a row's pattern checks end


def _search(pattern: str, text: str) -> bool:
    """``re.search`` for schema patterns, on ``regex`` with the row's remaining time."""
    at = getattr(_DEADLINE, "at", None)
    left = None if at is None else at - time.monotonic()
    if left is not None and left <= 0:
        raise PatternTimeout(pattern)
    try:
        return regex.search(pattern, text, timeout=left) is not None
    except TimeoutError:
        raise PatternTimeout(pattern) from None
    except (regex.error, OverflowError, ValueError) as exc:  # re took it, regex does not
        raise js_exceptions.SchemaError(f"pattern {pattern[:100]!r} cannot be used: "
                                        f"{exc}") from None


def _pattern(validator, patrn, instance, schema):
    if validator.is_type(instance, "string") and not _search(patrn, instance):
        yield js_exceptions.ValidationError(f"{instance!r} does not match {patrn!r}")


def _pattern_properties(validator, patterns, instance, schema):
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for k, v in instance.items():
            if _search(pattern, k):
                yield from validator.descend(v, subschema, path=k, schema_path=pattern)


def _additional_properties(validator, aP, instance, schema):
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = "|".join(schema.get("patternProperties", {}))
    extras = [k for k in instance if k not in properties and not (patterns and
                                                                    _search(patterns, k))]
    if validator.is_type(aP, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], aP, path=extra)
    elif not aP and extras:
        listed = ", ".join(repr(k) for k in sorted(extras, key=str))
        yield js_exceptions.ValidationError(f"Additional properties are not allowed ({listed} "
                                            f"{'was' if len(extras) == 1 else 'were'} "
                                            "unexpected)")


@lru_cache(maxsize=16)
def _bounded(cls: type) -> type:
    """Returns the validator class with its regular-expression keywords on ``_search``."""
    return validators.extend(cls, {"pattern": _pattern, "patternProperties": _pattern_properties,
                                   "additionalProperties": _additional_properties})


def _refuse(uri: str) -> Any:
    """The registry's retrieve: a schema's reference to anything outside it is never fetched."""
    raise ref_exceptions.NoSuchResource(ref=uri)


#: References resolve inside the schema itself only (jsonschema's default would fetch URLs).
LOCAL_ONLY = Registry(retrieve=_refuse)


@lru_cache(maxsize=512)
def declared_tools(tools: str | None, max_depth: int | None = None
                   ) -> dict[str, tuple[int, Any]]:
    """Returns ``{name: (index, validator or the schema's error text)}`` for a row's tools JSON."""
    out: dict[str, tuple[int, Any]] = {}
    for i, tool in enumerate(jsontext.loads(tools, max_depth) if tools else []):
        fn = tool["function"]
        schema = fn.get("parameters") or {"type": "object"}
        try:
            cls = validators.validator_for(schema)
            cls.check_schema(schema)
            out[fn["name"]] = (i, _bounded(cls)(schema, registry=LOCAL_ONLY))
        except js_exceptions.SchemaError as exc:
            out[fn["name"]] = (i, exc.message)
        except RecursionError:
            out[fn["name"]] = (i, "nested too deep to check")
        except (OverflowError, ValueError) as exc:  # e.g. a pattern's repeat count ("a{1e11}")
            out[fn["name"]] = (i, f"{type(exc).__name__}: {exc}")
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


def check_call(call: Mapping[str, Any], path: str, tools: str | None,
               limits: Limits | None = None) -> None:
    """Checks one canonical tool call against the row's tools.

    Raises:
        Rejected: With the first problem (see the module docstring).
    """
    name, text = call["function"]["name"], call["function"]["arguments"]
    found = _outcome(tools, name, text, limits.json_depth if limits else None,
                     limits.pattern_seconds if limits else None)
    if found is not None:
        code, where, message = found  # a path under the call starts with "."
        raise Rejected(code, path + where if where.startswith(".") else where, message)


@lru_cache(maxsize=1 << 16)
def _outcome(tools: str | None, name: str, text: str, max_depth: int | None,
             pattern_seconds: float | None) -> tuple[str, str, str] | None:
    """Returns a call's problem ``(code, path after the call's, message)``, or None; cached, as
    rows repeat calls and schemas (a pattern that timed out is not tried again)."""
    try:
        _check_call(name, text, "", tools, max_depth, pattern_seconds)
    except Rejected as exc:
        return exc.code, exc.path, exc.message
    return None


def _check_call(name: str, text: str, path: str, tools: str | None,
                max_depth: int | None = None, pattern_seconds: float | None = None) -> None:
    declared = declared_tools(tools, max_depth)
    if declared and name not in declared:
        close = difflib.get_close_matches(name, declared, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise Rejected("unknown_tool", f"{path}.function.name", f"{name!r} is not a tool the "
                       f"row declares ({', '.join(declared)}).{hint} Fix the name or declare it.")
    base = f"{path}.function.arguments"
    try:
        args = jsontext.loads(text, max_depth)
    except jsontext.TooDeep as exc:
        raise Rejected("too_deep", base, f"is {exc.msg}; it is not parsed. Flatten the "
                       "arguments, or raise limits.json_depth.") from None
    except json.JSONDecodeError as exc:
        raise Rejected("arguments_not_json", base, f"{text[:60]!r} is not JSON ({exc.msg} at "
                       f"column {exc.colno}). Write the arguments as a JSON object.") from exc
    if not isinstance(args, dict):
        raise Rejected("arguments_not_object", base, f"must be a JSON object (got "
                       f"{type(args).__name__}). Wrap the values in {{...}} by name.")
    if name not in declared:
        return
    index, validator = declared[name]
    where = f"tools[{index}].function.parameters"
    if isinstance(validator, str):
        raise Rejected("tool_schema_invalid", where,
                       f"is not a valid JSON Schema ({validator}). Fix the tool's schema.")
    try:
        error = js_exceptions.best_match(validator.iter_errors(args))
    except ref_exceptions.Unresolvable as exc:
        ref = str(getattr(exc, "ref", "") or getattr(exc, "pointer", ""))[:200]
        raise Rejected("tool_schema_ref", where, f"tool {name!r}'s schema has $ref {ref!r}, "
                       "which does not resolve inside the schema; references to other files "
                       "or URLs are never fetched. Inline the definition under $defs and "
                       "point at it with #/$defs/NAME.") from None
    except RecursionError:
        raise Rejected("tool_schema_ref", where, f"tool {name!r}'s schema refers to itself in "
                       "a cycle ($ref) or nests too deep to check. Break the cycle.") from None
    except js_exceptions.SchemaError as exc:
        raise Rejected("tool_schema_invalid", where, f"is not a valid JSON Schema "
                       f"({exc.message}). Fix the tool's schema.") from None
    except PatternTimeout as exc:
        raise Rejected("pattern_timeout", base, f"tool {name!r}'s schema pattern "
                       f"{exc.pattern[:100]!r} took longer than limits.pattern_seconds="
                       f"{pattern_seconds} on this row's arguments (catastrophic backtracking?). "
                       "Simplify the pattern, or raise limits.pattern_seconds.") from None
    if error is not None:
        raise _schema_problem(error, base, name)


def check_messages(messages: Sequence[Mapping[str, Any]], tools: str | None,
                   where: str = "messages", limits: Limits | None = None) -> None:
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
            check_call(call, f"{path}.tool_calls[{k}]", tools, limits)
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


def check_row(row: Mapping[str, Any], limits: Limits | None = None) -> None:
    """Checks one canonical row of any kind (without its length); its schema patterns take at
    most ``limits.pattern_seconds`` together.

    Raises:
        Rejected: With the first problem.
    """
    _DEADLINE.at = time.monotonic() + limits.pattern_seconds if limits else None
    try:
        _check_row(row, limits)
    finally:
        _DEADLINE.at = None


def _check_row(row: Mapping[str, Any], limits: Limits | None) -> None:
    if "text" in row:
        if not (row["text"] or "").strip():
            raise Rejected("empty_row", "text", "is empty. Drop the row or fill it.")
        return
    if "messages" in row:
        check_messages(row["messages"], row.get("tools"), limits=limits)
        return
    prompt = row["prompt"] or []
    check_messages([*prompt, *(row["chosen"] or [])], row.get("tools"), "prompt+chosen",
                   limits)
    if not row["rejected"] or row["rejected"][-1]["role"] != "assistant":
        raise Rejected("no_assistant_end", "rejected", "must end with an assistant turn.")
    if row["rejected"] == row["chosen"]:
        raise Rejected("same_pair", "rejected", "equals chosen; the pair teaches nothing. "
                       "Give a worse answer or drop the pair.")


def check_batch(batch: Mapping[str, list], indices: Sequence[int], max_length: int | None = None,
                measure: Measure | None = None, limits: Limits | None = None
                ) -> dict[str, list]:
    """Returns ``{"reject": [...]}`` for a batch of canonical rows (see the module docstring)."""
    names = [k for k in batch if k not in ("meta", "reject")]
    columns = [batch[k] for k in names]
    rows = [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]
    reasons = list(batch.get("reject") or [None] * len(indices))
    return {"reject": check_rows(rows, reasons, max_length, measure, limits)}


def check_rows(rows: Sequence[Mapping[str, Any]], reasons: list[dict[str, str] | None],
               max_length: int | None = None, measure: Measure | None = None,
               limits: Limits | None = None, render_errors: Sequence[str | None] | None = None
               ) -> list[dict[str, str] | None]:
    """Checks canonical rows (``check_batch`` on rows already built); fills ``reasons`` (None
    where a row has no reject yet) and returns it.

    Args:
        render_errors: Per row, the chat template's error when it could not render the row
            (``template_error``, after the row's own checks: a template often raises on what
            they name), else None; its length is not checked then.
    """
    for i, row in enumerate(rows):
        if reasons[i] is None:
            try:
                check_row(row, limits)
            except Rejected as exc:
                reasons[i] = exc.to_dict()
            except RecursionError:
                reasons[i] = Rejected("too_deep", "$", "is nested too deep to check. Flatten "
                                      "the row, or lower limits.json_depth.").to_dict()
            if reasons[i] is None and render_errors is not None and render_errors[i]:
                reasons[i] = Rejected("template_error", "$", f"model.chat_template cannot render "
                                      f"this row: {render_errors[i]}. Fix the row or the "
                                      "template.").to_dict()
    if max_length is not None and measure is not None:
        todo = [i for i, r in enumerate(reasons) if r is None]
        for i, n in zip(todo, measure([rows[i] for i in todo]), strict=True):
            if n > max_length:
                reasons[i] = Rejected("too_long", "$", f"{n} tokens > data.max_length="
                                      f"{max_length}. Raise data.max_length or shorten the "
                                      "row; it is not truncated.").to_dict()
    return reasons
