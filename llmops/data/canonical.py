"""Defines llmops's canonical row (OpenAI's chat form); normalises messages, calls and tools to it.

A canonical *chat* row has three columns (plus ``reject`` while it is being read and checked):

- ``messages``: a list of ``{"role", "content", "tool_calls", "tool_call_id", "name", "weight",
  "reasoning_content"}``, every key present (Arrow structs have fixed fields; an unused one is
  None). ``role`` is one of
  ``ROLES``; ``content`` is a string or None (a list of text parts is joined); ``tool_calls`` is
  None or a list of ``{"id", "type": "function", "function": {"name", "arguments"}}`` where
  ``arguments`` is always a *string*, kept verbatim when the input gave a string (so the checks
  can still reject one that is not JSON) and JSON-encoded when it gave an object; ``weight`` is
  None, 0 (not trained on) or 1; ``reasoning_content`` is an assistant message's reasoning trace
  (the field OpenAI-compatible servers and the Qwen3/DeepSeek-R1 templates use) or None: read
  from ``reasoning_content``, ``reasoning``, reasoning content parts or a leading
  ``<think>...</think>`` in the text (see ``convert``); it is never left in ``content``.
- ``tools``: the JSON text of the row's OpenAI ``tools`` list (``[{"type": "function",
  "function": {"name", "description", "parameters"}}]``), or None when the row declares none.
  JSON text, because Arrow cannot hold arbitrary JSON Schemas as typed columns.
- ``label``: True (a desirable answer), False (undesirable) or None (unlabelled), from a
  ``label`` / ``kto_tag`` column (``data.columns.label``): JSON booleans, or the text "true" /
  "false" (any case, as CSV holds them); anything else rejects the row (``bad_label``). SFT
  trains only rows whose label is not False; KTO trains on both.
- ``meta``: ``{"file", "line", "row", "format"}``: the source file, its 1-based line (None for
  columnar files), the 1-based record number in that file, and the format it was read as.

The split files (train/val/test.jsonl, ``to_openai_row``) hold OpenAI rows: a message key that
is None is left out (so ``reasoning_content`` appears only on assistant messages that have a
trace), and ``label`` appears only on labelled rows (``"label": true`` / ``false``).

A *preference* row has ``prompt``, ``chosen`` and ``rejected`` message lists instead of
``messages``; a *text* row (continued pre-training) has ``text``. ``reject`` is None or
``{"code", "path", "message"}``: a stable reason code, the JSON path inside the source row, and a
sentence that names the value and the fix.

Pure Python (plus ``orjson``, see ``jsontext``); ``features(kind)`` imports ``datasets`` to give
a kind's ``datasets.Features``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from llmops.data import jsontext

ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")
KINDS: tuple[str, ...] = ("chat", "preference", "text")

#: Columns of each kind, in order, ``reject`` included.
COLUMNS: dict[str, tuple[str, ...]] = {
    "chat": ("messages", "tools", "label", "meta", "reject"),
    "preference": ("prompt", "chosen", "rejected", "tools", "meta", "reject"),
    "text": ("text", "meta", "reject"),
}


class Rejected(ValueError):
    """One source row cannot become a canonical row: a reason code, a JSON path and a message."""

    def __init__(self, code: str, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.code, self.path, self.message = code, path, message

    def to_dict(self) -> dict[str, str]:
        """Returns the reject as the ``reject`` column holds it."""
        return {"code": self.code, "path": self.path, "message": self.message}


def message(
    role: str,
    content: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    tool_call_id: str | None = None,
    name: str | None = None,
    weight: float | None = None,
    reasoning_content: str | None = None,
) -> dict[str, Any]:
    """Returns one canonical message with every key present."""
    return {
        "role": role,
        "content": content,
        "tool_calls": tool_calls,
        "tool_call_id": tool_call_id,
        "name": name,
        "weight": weight,
        "reasoning_content": reasoning_content,
    }


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def weight(value: Any, path: str) -> float | None:
    """Returns a message weight as None, 0.0 or 1.0."""
    if value is None:
        return None
    if isinstance(value, bool) or value not in (0, 1):
        raise Rejected("bad_weight", path, f"must be 0 or 1 (got {value!r}). 0 leaves the "
                       "message out of the loss.")
    return float(value)


def arguments_text(value: Any) -> str:
    """Returns call arguments as JSON text: a string is kept verbatim, None becomes ``{}``."""
    if value is None:
        return "{}"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def tool_call(value: Any, path: str, call_id: str | None = None) -> dict[str, Any]:
    """Normalises one tool call: OpenAI's ``{"id", "type", "function"}`` or a flat ``{"name",
    "arguments"}``; ``call_id`` is used when the call has no id of its own."""
    if not isinstance(value, dict):
        raise Rejected(
            "bad_tool_call",
            path,
            f"must be an object with 'function' (got {_kind(value)}). "
            'Write {"id": ..., "type": "function", "function": {"name": ..., "arguments": ...}}.',
        )
    fn = value.get("function")
    fn_path = f"{path}.function"
    if fn is None and "name" in value:
        fn, fn_path = value, path
    if not isinstance(fn, dict):
        raise Rejected(
            "bad_tool_call",
            fn_path,
            f"must be an object with 'name' and 'arguments' (got {_kind(fn)}).",
        )
    name = fn.get("name")
    if not isinstance(name, str) or not name.strip():
        raise Rejected(
            "tool_call_name",
            f"{fn_path}.name",
            f"must be the called tool's name (got {name!r}). Name the tool.",
        )
    ident = value.get("id") if fn is not value else None
    return {
        "id": ident if isinstance(ident, str) and ident else call_id,
        "type": "function",
        "function": {"name": name, "arguments": arguments_text(fn.get("arguments"))},
    }


def tools_json(value: Any, path: str = "tools", max_depth: int | None = None) -> str | None:
    """Normalises a row's tools (a list, or its JSON text) to OpenAI's form; returns JSON text.

    Each tool may be ``{"type": "function", "function": {...}}`` or the bare function schema
    ``{"name", "description", "parameters"}`` (ShareGPT). None, ``""`` and ``[]`` declare none.
    Rows mostly repeat one tools list, so the result is cached by the list's JSON text.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        return _tools_text(value, path, max_depth)
    text = jsontext.key(value) if isinstance(value, list) else None
    return _tools_text(text, path, max_depth) if text is not None else _tools(value, path)


@lru_cache(maxsize=256)
def _tools_text(text: str, path: str, max_depth: int | None = None) -> str | None:
    try:
        value = jsontext.loads(text, max_depth)
    except jsontext.TooDeep as exc:
        raise Rejected("too_deep", path, f"is {exc.msg}; it is not parsed. Flatten the tools' "
                       "schemas, or raise limits.json_depth.") from None
    except json.JSONDecodeError as exc:
        raise Rejected(
            "tools_not_json",
            path,
            f"is a string but not JSON ({exc.msg} at column {exc.colno}). "
            "Write the tools as a JSON list of function schemas.",
        ) from exc
    return _tools(value, path)


def _tools(value: Any, path: str) -> str | None:
    if not isinstance(value, list):
        raise Rejected(
            "bad_tools", path, f"must be a list of function schemas (got {_kind(value)})."
        )
    out = []
    for i, tool in enumerate(value):
        fn = tool.get("function") if isinstance(tool, dict) and "function" in tool else tool
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise Rejected(
                "bad_tools",
                f"{path}[{i}]",
                "must be a function schema with a string 'name' "
                '({"type": "function", "function": {"name": ..., "parameters": {...}}}).',
            )
        out.append({"type": "function", "function": fn})
    return json.dumps(out, ensure_ascii=False) if out else None


def plain_message(m: dict[str, Any]) -> dict[str, Any]:
    """Returns a canonical message in the stored OpenAI form: unused keys dropped, call arguments
    kept as JSON text (``llmops.data.chat.template_message`` gives a template its objects)."""
    out: dict[str, Any] = {"role": m["role"], "content": m["content"]}
    if m.get("tool_calls"):
        calls = []
        for c in m["tool_calls"]:
            call = {"type": "function", "function": {"name": c["function"]["name"],
                                                     "arguments": c["function"]["arguments"]}}
            if c.get("id"):
                call["id"] = c["id"]
            calls.append(call)
        out["tool_calls"] = calls
    for key in ("tool_call_id", "name", "weight", "reasoning_content"):
        if m.get(key) is not None:
            out[key] = m[key]
    return out


def to_openai_row(row: dict[str, Any]) -> dict[str, Any]:
    """Returns a canonical row as a plain OpenAI row, as the split files hold it: unused keys
    dropped, ``tools`` parsed, call arguments kept as JSON text (a template gets objects through
    ``llmops.data.chat``).

    Args:
        row: A canonical row (chat or preference kind), e.g. ``dataset[i]``.
    """
    out: dict[str, Any] = {}
    for key in ("messages", "prompt", "chosen", "rejected"):
        if key in row:
            out[key] = [plain_message(m) for m in row[key]]
    if row.get("tools"):
        out["tools"] = json.loads(row["tools"])
    if row.get("label") is not None:
        out["label"] = bool(row["label"])
    if "meta" in row:
        out["meta"] = row["meta"]
    return out


def features(kind: str):
    """Returns the ``datasets.Features`` of a canonical kind's columns (``reject`` included)."""
    from datasets import Features, List, Value

    call = {"id": Value("string"), "type": Value("string"),
            "function": {"name": Value("string"), "arguments": Value("string")}}
    message = List({"role": Value("string"), "content": Value("string"),
                    "tool_calls": List(call), "tool_call_id": Value("string"),
                    "name": Value("string"), "weight": Value("float64"),
                    "reasoning_content": Value("string")})
    types = {"messages": message, "prompt": message, "chosen": message, "rejected": message,
             "tools": Value("string"), "text": Value("string"), "label": Value("bool"),
             "meta": {"file": Value("string"), "line": Value("int64"), "row": Value("int64"),
                      "format": Value("string")},
             "reject": {"code": Value("string"), "path": Value("string"),
                        "message": Value("string")}}
    return Features({name: types[name] for name in COLUMNS[kind]})
