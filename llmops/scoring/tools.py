"""Scores predicted tool calls against the reference calls structurally, per call, and aggregates.

``score_calls(reference, predicted, tools, refusal)`` scores one row. ``reference`` is the list of
calls the row expects (canonical ``tool_calls`` or ``{"name", "arguments"}``); an empty list makes
a *no-call* row (refusal or irrelevance: the right answer is not to call). ``predicted`` is what a
parser (``parsers``) read from the model's answer. Calls are matched one to one by tool name
(order free, parallel calls included), most equal arguments first. Arguments compare as parsed
JSON: key order and spacing are free, ``1`` equals ``1.0``, ``true`` does not equal ``1``.

``aggregate(scores)`` turns row scores into metrics (None where nothing of that kind was scored):
exact_match (every row), tool_accuracy and call_exact (per reference call), arg_precision,
arg_recall and arg_f1 (per top-level argument, over all calls), call_count_accuracy,
json_valid_rate and schema_valid_rate (call rows), no_call_accuracy and refusal_rate (no-call
rows), false_refusal_rate (call rows answered with a refusal), double_encoded_rate (rows whose
answer wrote a call with its arguments as a JSON string: the parsers refuse such a call, so it
is a syntax error that makes the row neither exact nor JSON-valid), per_tool exact match,
counts. A reference call's arguments may be JSON text (the stored OpenAI form) and are parsed;
a predicted call from a model's text has object arguments (``parsers``).
``score_tool_rows(rows, answers, parse)`` scores a test split's tool and refusal rows from the
model's decoded answers; the bundled Task-API's metrics (exact_match, json_valid_rate,
refusal_rate, false_refusal_rate, per_tool) are a case of it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from referencing.exceptions import Unresolvable

from llmops.data import task_api
from llmops.data.toolcheck import declared_tools
from llmops.scoring.parsers import ParsedAnswer

_BAD = object()  # arguments that are not JSON


def _call(call: Mapping[str, Any]) -> tuple[str, Any]:
    """Returns ``(name, parsed arguments or _BAD)`` of a canonical or flat call."""
    fn = call.get("function") or call
    args = fn.get("arguments")
    if args is None:
        args = {}
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            args = _BAD
    return str(fn.get("name")), args


def same(a: Any, b: Any) -> bool:
    """Tells whether two parsed JSON values are equal (numbers by value, booleans only to
    booleans, objects regardless of key order)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def _hits(ref: Any, pred: Any) -> int:
    if not isinstance(ref, dict) or not isinstance(pred, dict):
        return 0
    return sum(1 for k in ref if k in pred and same(ref[k], pred[k]))


def _size(args: Any) -> int:
    return len(args) if isinstance(args, dict) else 0


def _match(ref: list, pred: list) -> list[tuple[int, int]]:
    pairs = sorted(((-_hits(r[1], p[1]), i, j) for i, r in enumerate(ref)
                    for j, p in enumerate(pred) if r[0] == p[0]))
    used_r, used_p, out = set(), set(), []
    for _, i, j in pairs:
        if i not in used_r and j not in used_p:
            used_r.add(i)
            used_p.add(j)
            out.append((i, j))
    return out


def _schema_valid(pred: list, tools: Any) -> bool | None:
    if tools is None:
        return None
    declared = declared_tools(tools if isinstance(tools, str) or tools is None
                              else json.dumps(tools))
    for name, args in pred:
        entry = declared.get(name)
        if entry is None or isinstance(entry[1], str) or not isinstance(args, dict):
            return False
        try:
            if not entry[1].is_valid(args):
                return False
        except (Unresolvable, RecursionError):  # a $ref outside the schema, or a cycle
            return False
    return bool(pred)


def score_calls(reference: Sequence[Mapping[str, Any]], predicted: ParsedAnswer,
                tools: Any = None, refusal: Callable[[str], bool] | None = None) -> dict:
    """Scores one row's predicted calls (see the module docstring).

    Args:
        reference: The expected calls; empty for a no-call row.
        predicted: The parsed answer.
        tools: The row's tools (JSON text or list) for schema validity; None skips it.
        refusal: Tells whether an answer's text declines; None counts any answer without a call
            (and without a begun call) as declining.

    Returns:
        The row's counts and flags, as ``aggregate`` reads them.
    """
    ref = [_call(c) for c in reference]
    pred = [_call(c) for c in predicted.calls]
    declined = not pred and not predicted.errors
    refused = declined and (refusal(predicted.text) if refusal else True)
    pairs = _match(ref, pred)
    exact_calls = sum(1 for i, j in pairs if ref[i][1] is not _BAD and same(ref[i][1], pred[j][1]))
    json_valid = bool(pred) and not predicted.errors and all(a is not _BAD for _, a in pred)
    score = {
        "kind": "call" if ref else "no_call",
        "tool": ref[0][0] if ref else None,
        "n_ref": len(ref), "n_pred": len(pred), "tool_hits": len(pairs), "exact_calls":
        exact_calls, "arg_tp": sum(_hits(ref[i][1], pred[j][1]) for i, j in pairs),
        "arg_ref": sum(_size(a) for _, a in ref), "arg_pred": sum(_size(a) for _, a in pred),
        "count_ok": len(pred) == len(ref), "json_valid": json_valid,
        "schema_valid": _schema_valid(pred, tools) if ref else None,
        "no_call": declined, "refused": refused, "double_encoded": predicted.double_encoded,
    }
    if ref:
        score["exact"] = (len(pred) == len(ref) == exact_calls) and not predicted.errors
    else:
        score["exact"] = refused
    return score


def _rate(flags: Sequence[bool | None]) -> float | None:
    measured = [f for f in flags if f is not None]
    return sum(measured) / len(measured) if measured else None


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def aggregate(scores: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Aggregates row scores into metrics (see the module docstring)."""
    calls = [s for s in scores if s["kind"] == "call"]
    none = [s for s in scores if s["kind"] == "no_call"]

    def total(key: str) -> int:
        return sum(s[key] for s in scores)

    precision = _ratio(total("arg_tp"), total("arg_pred"))
    recall = _ratio(total("arg_tp"), total("arg_ref"))
    f1 = None if precision is None or recall is None else (
        2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    per_tool: dict[str, list[int]] = {}
    for s in calls:
        hit = per_tool.setdefault(s["tool"], [0, 0])
        hit[0], hit[1] = hit[0] + int(s["exact"]), hit[1] + 1
    return {
        "exact_match": _rate([s["exact"] for s in scores]),
        "tool_accuracy": _ratio(total("tool_hits"), total("n_ref")),
        "call_exact": _ratio(total("exact_calls"), total("n_ref")),
        "arg_precision": precision, "arg_recall": recall, "arg_f1": f1,
        "call_count_accuracy": _rate([s["count_ok"] for s in calls]),
        "json_valid_rate": _rate([s["json_valid"] for s in calls]),
        "schema_valid_rate": _rate([s["schema_valid"] for s in calls]),
        "no_call_accuracy": _rate([s["no_call"] for s in none]),
        "refusal_rate": _rate([s["refused"] for s in none]),
        "false_refusal_rate": _rate([s["refused"] for s in calls]),
        "double_encoded_rate": _rate([s["double_encoded"] > 0 for s in scores]),
        "per_tool": {t: h / n for t, (h, n) in sorted(per_tool.items())},
        "counts": {"total": len(scores), "call": len(calls), "no_call": len(none)},
    }


ROW_KINDS: tuple[str, ...] = ("tool", "refusal", "text")


def _norm(text: str) -> str:
    return " ".join(text.replace("\u2019", "'").split()).lower()


def _text_calls(row: Mapping[str, Any], parse: Callable[[str], ParsedAnswer] | None) -> list:
    """Returns the calls a row's answer text holds in the model's syntax (all of it calls)."""
    content = row["messages"][-1].get("content")
    if parse is None or not isinstance(content, str):
        return []
    parsed = parse(content)
    return parsed.calls if parsed.calls and not parsed.errors and not parsed.text else []


def reference_calls(row: Mapping[str, Any], parse: Callable[[str], ParsedAnswer] | None = None
                    ) -> list:
    """Returns the calls a row expects: its last turn's ``tool_calls``, else the calls its text
    holds in the model's syntax when ``parse`` is given (plain-chat data written that way)."""
    return list(row["messages"][-1].get("tool_calls") or _text_calls(row, parse))


def row_kind(row: Mapping[str, Any], refusal_texts: Sequence[str] = (task_api.REFUSAL,),
             parse: Callable[[str], ParsedAnswer] | None = None) -> str:
    """Tells what a test row asks for, from the row itself (never from a dataset name).

    Returns:
        ``"tool"`` when its last turn has ``tool_calls`` (or, with ``parse``, its text is only
        calls in the model's syntax); ``"refusal"`` when ``meta.kind`` is ``refusal`` (or the
        legacy ``meta.refuse`` is true) or its answer is one of ``refusal_texts`` (case and
        spacing ignored); ``"text"`` otherwise.
    """
    if reference_calls(row, parse):
        return "tool"
    meta = row.get("meta") or {}
    if meta.get("kind") == "refusal" or meta.get("refuse"):
        return "refusal"
    content = row["messages"][-1].get("content")
    if isinstance(content, str) and _norm(content) in {_norm(t) for t in refusal_texts}:
        return "refusal"
    return "text"


def score_tool_rows(rows: Sequence[Mapping[str, Any]], answers: Sequence[str],
                    parse: Callable[[str], ParsedAnswer],
                    refusal_texts: Sequence[str] = (task_api.REFUSAL,)
                    ) -> tuple[dict[str, Any], list[dict[str, Any] | None]]:
    """Scores a model's answers on the tool and refusal rows of a test split (see ``row_kind``).

    Each answer is read with ``parse`` (the model's own call syntax, ``parsers.parser_for``) and
    compared with the row's calls (``reference_calls``) and ``tools`` by ``score_calls``; a
    refusal row is answered right by no call and a declining text (one of ``refusal_texts`` or
    ``task_api.is_refusal``). Free-text rows are left to the text metrics.

    Args:
        rows: OpenAI chat rows (the last message is the reference).
        answers: One decoded answer per row, in the same order.
        parse: The parser of the model's call syntax.
        refusal_texts: Answers that decline, besides those ``task_api.is_refusal`` recognises.

    Returns:
        ``(metrics, per_row)``: ``aggregate``'s metrics over the tool and refusal rows (None where
        no row of a kind was scored; ``counts.text`` = free-text rows left out) and, per row, its
        score (``kind``, ``exact``, ``json_valid``, ``refused``, ... plus ``calls``, the parsed
        calls) or None for a free-text row.

    Raises:
        ValueError: If rows and answers differ in length.
    """
    if len(rows) != len(answers):
        raise ValueError(f"got {len(rows)} rows but {len(answers)} answers. Pass one answer per "
                         "row.")
    refusals = {_norm(t) for t in refusal_texts}

    def declines(text: str) -> bool:
        return _norm(text) in refusals or task_api.is_refusal(text)

    per_row: list[dict[str, Any] | None] = []
    for row, answer in zip(rows, answers, strict=True):
        kind = row_kind(row, refusal_texts, parse)
        if kind == "text":
            per_row.append(None)
            continue
        parsed = parse(answer)
        reference = reference_calls(row, parse) if kind == "tool" else []
        score = score_calls(reference, parsed, row.get("tools"), declines)
        per_row.append({**score, "calls": parsed.calls, "syntax_errors": parsed.errors})
    metrics = aggregate([s for s in per_row if s is not None])
    metrics["counts"]["text"] = sum(s is None for s in per_row)
    return metrics, per_row
