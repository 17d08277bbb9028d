"""Reads xLAM-style function-calling rows: a ``query``, its ``tools`` and the ``answers`` calls.

Salesforce's xLAM sets (and those built like them) hold one user query, the tools it may use
and the calls that answer it, ``tools`` and ``answers`` as JSON text. A tool's ``parameters``
map each name to ``{"type", "description", "default"}`` in Python's type notation, which
``parameters_schema`` turns into JSON Schema:

- ``str`` → string, ``int`` → integer, ``float`` → number, ``bool`` → boolean,
  ``List[X]`` / ``list`` / ``Tuple``/``Set`` → array (of X), ``Dict[...]`` / ``dict`` →
  object, ``Any`` (and ``Callable``, which JSON can only name) → any value, ``Union[A, B]`` /
  ``A or B`` → anyOf, ``Optional[X]`` → X, ``Literal[...]`` → enum;
- ``..., optional`` (whatever follows it, e.g. ``, optional, default='en'``), ``Optional[...]``
  or a ``default`` makes a parameter not required; the default is kept.

Parameters already in JSON Schema (``{"type": "object", "properties": ...}``) are kept. The
row becomes ``[user: query, assistant: tool_calls]``. A type llmops cannot read, notation longer
than ``TYPE_CHARS`` or nested deeper than ``limits.json_depth`` is one reject (``xlam_type``,
``too_deep``); the calls are then checked against the converted schemas like any call. Pure
Python.
"""

from __future__ import annotations

import re
from typing import Any

from llmops.data import canonical as c
from llmops.data import jsontext

TYPE_CHARS = 200
_SIMPLE: dict[str, dict[str, Any]] = {
    "str": {"type": "string"}, "string": {"type": "string"}, "int": {"type": "integer"},
    "integer": {"type": "integer"}, "float": {"type": "number"}, "number": {"type": "number"},
    "bool": {"type": "boolean"}, "boolean": {"type": "boolean"}, "list": {"type": "array"},
    "array": {"type": "array"}, "tuple": {"type": "array"}, "set": {"type": "array"},
    "dict": {"type": "object"}, "object": {"type": "object"}, "any": {}, "none": {"type": "null"},
    "null": {"type": "null"}, "nonetype": {"type": "null"},
    # a callable passed by name or as code: JSON can hold only its text, so any value is taken
    "callable": {}, "function": {},
}
_ARRAYS = ("list", "tuple", "set", "sequence", "iterable")
_OPTIONAL = re.compile(r",\s*optional\b.*$", re.IGNORECASE | re.DOTALL)


def _split_args(text: str) -> list[str]:
    """Splits ``A, B[C, D]`` at its top-level commas."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return [p.strip() for p in out if p.strip()]


def type_schema(text: str, path: str, depth: int = 0, max_depth: int = 32) -> dict[str, Any]:
    """Returns the JSON Schema of a Python type notation (see the module docstring).

    Raises:
        canonical.Rejected: ``xlam_type`` for notation it cannot read, ``too_deep`` past
            ``max_depth`` levels.
    """
    if depth > max_depth:
        raise c.Rejected("too_deep", path, f"nests types deeper than {max_depth} levels. "
                         "Flatten the parameter's type.")
    t = text.strip()
    if " or " in t:
        return {"anyOf": [type_schema(p, path, depth + 1, max_depth) for p in t.split(" or ")]}
    if "|" in t and "[" not in t:
        return {"anyOf": [type_schema(p, path, depth + 1, max_depth) for p in t.split("|")]}
    match = re.fullmatch(r"(?:typing\.)?(\w+)\s*(?:\[(.*)\])?", t, re.DOTALL)
    if match is None:
        raise _unknown(text, path)
    name, inner = match[1].lower(), match[2]
    args = _split_args(inner) if inner else []
    if name in ("optional",) and len(args) == 1:
        return type_schema(args[0], path, depth + 1, max_depth)
    if name == "union" and args:
        return {"anyOf": [type_schema(a, path, depth + 1, max_depth) for a in args]}
    if name == "literal" and args:
        return {"enum": [a.strip("'\"") for a in args]}
    if name in _ARRAYS:
        out: dict[str, Any] = {"type": "array"}
        if len(args) == 1 or (name == "tuple" and args and args[-1] == "..."):
            out["items"] = type_schema(args[0], path, depth + 1, max_depth)
        return out
    if name in ("dict", "mapping"):
        out = {"type": "object"}
        if len(args) == 2 and args[1].lower() != "any":
            out["additionalProperties"] = type_schema(args[1], path, depth + 1, max_depth)
        return out
    if name in _SIMPLE and not args:
        return dict(_SIMPLE[name])
    raise _unknown(text, path)


def _unknown(text: str, path: str) -> c.Rejected:
    return c.Rejected("xlam_type", path, f"type {text[:TYPE_CHARS]!r} is not Python type notation "
                      "llmops reads (str, int, float, bool, List[...], Dict[...], Tuple, Any, "
                      "Union[...], Optional[...], '..., optional'). Write the parameter's "
                      "schema as JSON Schema instead.")


def parameters_schema(params: Any, path: str, max_depth: int = 32) -> dict[str, Any]:
    """Returns a tool's JSON Schema from xLAM's ``{name: {"type", "description", "default"}}``;
    parameters already in JSON Schema are returned as they are.

    Raises:
        canonical.Rejected: For parameters that are not an object of parameter objects, or a
            type it cannot read.
    """
    if params is None or params == {}:
        return {"type": "object", "properties": {}}
    if not isinstance(params, dict):
        raise c.Rejected("bad_tools", path, f"must be an object of parameters (got "
                         f"{type(params).__name__}).")
    if params.get("type") == "object" and isinstance(params.get("properties"), dict):
        return params
    properties, required = {}, []
    for name, spec in params.items():
        where = f"{path}.{name}"
        if not isinstance(spec, dict):
            raise c.Rejected("bad_tools", where, "must be an object with 'type' and "
                             "'description'.")
        kind = spec.get("type", "any")
        if not isinstance(kind, str) or len(kind) > TYPE_CHARS:
            raise c.Rejected("xlam_type", f"{where}.type", f"must be a type name of at most "
                             f"{TYPE_CHARS} characters (got {str(kind)[:80]!r}).")
        optional = bool(_OPTIONAL.search(kind)) or kind.strip().lower().startswith("optional[")
        schema = type_schema(_OPTIONAL.sub("", kind), f"{where}.type", 0, max_depth)
        if isinstance(spec.get("description"), str):
            schema["description"] = spec["description"]
        if "default" in spec:
            schema["default"] = spec["default"]
        properties[name] = schema
        if not optional and "default" not in spec:
            required.append(name)
    out: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        out["required"] = required
    return out


def _json(row: dict[str, Any], col: str, max_depth: int | None) -> Any:
    value = row.get(col)
    if isinstance(value, str):
        try:
            return jsontext.loads(value, max_depth)
        except jsontext.TooDeep as exc:
            raise c.Rejected("too_deep", col, f"holds JSON text {exc.msg}; it is not parsed. "
                             "Flatten it, or raise limits.json_depth.") from None
        except ValueError as exc:
            raise c.Rejected("bad_field", col, f"holds text that is not JSON ({exc}). Write it "
                             "as a JSON list.") from None
    return value


def read_row(row: dict[str, Any], cols: dict[str, str], max_depth: int | None
             ) -> dict[str, Any]:
    """Returns ``{"messages", "tools"}`` of an xLAM row (see the module docstring).

    Raises:
        canonical.Rejected: For a missing query, answers that are not a list of calls, or
            tools that do not convert.
    """
    query = row.get(cols["query"])
    if not isinstance(query, str) or not query.strip():
        raise c.Rejected("missing_field" if query is None else "bad_field", cols["query"],
                         f"must be the user's request as text (got {query!r}). Fill it, or map "
                         "another column with data.columns.query.")
    depth = max_depth or 32
    tools = _json(row, cols["tools"], max_depth) or []
    if not isinstance(tools, list):
        raise c.Rejected("bad_tools", cols["tools"], "must be a list of tools.")
    converted = []
    for i, tool in enumerate(tools):
        where = f"{cols['tools']}[{i}]"
        fn = tool.get("function") if isinstance(tool, dict) and "function" in tool else tool
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise c.Rejected("bad_tools", where, "must be a function with a string 'name'.")
        converted.append({**fn, "parameters": parameters_schema(
            fn.get("parameters"), f"{where}.parameters", depth)})
    answers = _json(row, cols["answers"], max_depth)
    if not isinstance(answers, list) or not answers:
        raise c.Rejected("missing_field" if answers is None else "bad_field", cols["answers"],
                         "must be a non-empty list of calls "
                         '([{"name": ..., "arguments": {...}}]); a row without calls has no '
                         "answer to learn.")
    calls = [c.tool_call(a, f"{cols['answers']}[{k}]", f"call_1_{k}")
             for k, a in enumerate(answers)]
    return {"messages": [c.message("user", query), c.message("assistant", None, calls)],
            "tools": c.tools_json(converted, cols["tools"], max_depth) if converted else None}
