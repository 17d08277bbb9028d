"""A small interpreter of Go's text/template, for the subset Ollama chat templates use. Pure.

No Go toolchain runs here, so Modelfile templates are checked by this interpreter. It follows
text/template's rules for what it supports and raises TemplateError for anything else:

- trim markers ``{{-`` / ``-}}``, comments ``{{/* */}}``;
- ``if`` / ``else if`` / ``else`` / ``end``, ``range`` (``range $i, $m := ...``, with ``else``),
  ``with``; variables ``$x := ...`` and ``$x = ...`` (assignment reaches the enclosing scope);
- operands ``.``, ``.A.B``, ``$``, ``$x.A``, ``(pipeline).A``, string, raw string, number,
  ``true``/``false``/``nil``; pipes ``x | f``;
- Ollama's functions: ``eq ne lt le gt ge not and or len index slice json`` (``and``/``or``
  short-circuit, as since Go 1.18).

Truth follows Go: false, 0, nil and empty strings, lists and maps are false; everything else
(structs) is true. A value printed with ``{{ x }}`` uses its ``__str__``: Ollama's tool and
argument types print as Go's ``encoding/json`` does (see ``go_json``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any


class TemplateError(ValueError):
    """A Go template uses something this interpreter does not support, or is malformed."""


def go_json(value: Any) -> str:
    """Returns value as Go's json.Marshal writes it: compact, HTML characters escaped."""
    if isinstance(value, GoValue):
        value = value.data
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


class GoValue:
    """A Go struct or map seen from a template: named fields, printed as JSON (a Stringer)."""

    def __init__(self, data: Any, fields: dict[str, Any] | None = None, truthy: bool = True):
        self.data, self.fields, self.truthy = data, fields or {}, truthy

    def __str__(self) -> str:
        return go_json(self.data)

    def __bool__(self) -> bool:
        return self.truthy


_TOKEN = re.compile(r"\{\{(-\s)?\s*(.*?)\s*(\s-)?\}\}", re.DOTALL)
_WORD = re.compile(r'"(?:[^"\\]|\\.)*"|`[^`]*`|\(|\)(?:\.[\w.]+)?|\||[^\s()|]+')


def _lex(template: str) -> list[Any]:
    """Splits a template into text strings and ("action", text) tuples, applying trim markers."""
    parts: list[Any] = []
    pos, trim_next = 0, False
    for m in _TOKEN.finditer(template):
        text = template[pos:m.start()]
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if text:
            parts.append(text)
        act = m.group(2)
        if not (act.startswith("/*") and act.endswith("*/")):
            parts.append(("action", act))
        trim_next, pos = bool(m.group(3)), m.end()
    tail = template[pos:].lstrip(" \t\r\n") if trim_next else template[pos:]
    if tail:
        parts.append(tail)
    return parts


def parse(template: str) -> list[Any]:
    """Parses a Go template into a tree of text, ("expr"), ("if"), ("range") and ("with") nodes.

    Raises:
        TemplateError: On an unbalanced end/else.
    """
    parts = _lex(template)

    def block(i: int) -> tuple[list[Any], int, str]:
        nodes: list[Any] = []
        while i < len(parts):
            p = parts[i]
            if isinstance(p, str):
                nodes.append(p)
                i += 1
                continue
            act = p[1]
            word = act.split(None, 1)[0] if act else ""
            if word in ("end", "else"):
                return nodes, i, act
            if word in ("if", "range", "with"):
                node, i = control(word, act[len(word):].strip(), i + 1)
                nodes.append(node)
                continue
            nodes.append(("expr", act))
            i += 1
        return nodes, i, ""

    def control(word: str, arg: str, i: int) -> tuple[Any, int]:
        body, i, ended = block(i)
        other: list[Any] = []
        if not ended:
            raise TemplateError(f"missing {{{{ end }}}} for {{{{ {word} {arg} }}}}")
        if ended.startswith("else"):
            rest = ended[4:].strip()
            if rest.startswith(("if ", "with ")):
                sub = rest.split(None, 1)
                node, i = control(sub[0], sub[1], i + 1)
                return (word, arg, body, [node]), i
            other, i, ended = block(i + 1)
            if ended != "end":
                raise TemplateError(f"missing {{{{ end }}}} after {{{{ else }}}} of {word}")
        return (word, arg, body, other), i + 1

    nodes, i, ended = block(0)
    if ended:
        raise TemplateError(f"unexpected {{{{ {ended} }}}}")
    return nodes


def _truth(v: Any) -> bool:
    return bool(v)


def _length(v: Any) -> int:
    return len(v.data if isinstance(v, GoValue) else v)


def _index(v: Any, *keys: Any) -> Any:
    for k in keys:
        v = v[k]
    return v


def _slice(v: Any, *bounds: int) -> Any:
    if len(bounds) > 2:
        raise TemplateError("slice with 3 indices is not supported")
    if len(bounds) == 2:
        return v[bounds[0]:bounds[1]]
    return v[bounds[0]:] if bounds else v


_FUNCS: dict[str, Callable[..., Any]] = {
    "eq": lambda a, *b: any(a == x for x in b),
    "ne": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "not": lambda a: not _truth(a),
    "and": lambda *a: None,  # evaluated lazily by _Eval._logic
    "or": lambda *a: None,
    "len": _length,
    "index": _index,
    "slice": _slice,
    "json": go_json,
}


class _Scope:
    """Template variables; a child scope assigns into the scope that declared the name."""

    def __init__(self, parent: _Scope | None = None):
        self.vars: dict[str, Any] = {}
        self.parent = parent

    def get(self, name: str) -> Any:
        s: _Scope | None = self
        while s is not None:
            if name in s.vars:
                return s.vars[name]
            s = s.parent
        raise TemplateError(f"undefined variable {name}")

    def assign(self, name: str, value: Any) -> None:
        s: _Scope | None = self
        while s is not None:
            if name in s.vars:
                s.vars[name] = value
                return
            s = s.parent
        raise TemplateError(f"assignment to undeclared variable {name}")


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, GoValue):
        if name not in obj.fields:
            raise TemplateError(f"can't evaluate field {name}")
        return obj.fields[name]
    if isinstance(obj, dict):
        if name not in obj:
            raise TemplateError(f"can't evaluate field {name}")
        return obj[name]
    raise TemplateError(f"can't evaluate field {name} in {type(obj).__name__}")


def _fields(obj: Any, path: str) -> Any:
    for name in [p for p in path.split(".") if p]:
        obj = _field(obj, name)
    return obj


class _Eval:
    """Compiles a pipeline (a list of words) into a thunk over dot and a scope (lazy, so that
    ``and``/``or`` short-circuit)."""

    def __init__(self, words: list[str], dot: Any, scope: _Scope):
        self.words, self.pos, self.dot, self.scope = words, 0, dot, scope

    def pipeline(self, stop: str | None = None) -> Callable[[], Any]:
        commands = [self.command(stop)]
        while self.pos < len(self.words) and self.words[self.pos] == "|":  # x | f
            self.pos += 1
            commands.append(self.command(stop))

        def run() -> Any:
            value = commands[0](())
            for cmd in commands[1:]:
                value = cmd((value,))
            return value

        return run

    def command(self, stop: str | None) -> Callable[[tuple[Any, ...]], Any]:
        start = self.pos
        items: list[Callable[[], Any]] = []
        name = self.words[self.pos] if self.words[self.pos] in _FUNCS else None
        if name is not None:
            self.pos += 1
        while self.pos < len(self.words) and self.words[self.pos] != "|" and not (
                stop and self.words[self.pos].startswith(stop)):
            items.append(self.operand())
        if name is None:
            if len(items) != 1:
                raise TemplateError(f"unsupported command {' '.join(self.words[start:self.pos])!r}")
            return lambda piped: items[0]() if not piped else _no_pipe()
        if name in ("and", "or"):
            return lambda piped: self._logic(name, [*items, *(lambda v=v: v for v in piped)])
        return lambda piped: _FUNCS[name](*(f() for f in items), *piped)

    @staticmethod
    def _logic(name: str, items: list[Callable[[], Any]]) -> Any:
        value: Any = None
        for f in items:
            value = f()
            if _truth(value) == (name == "or"):
                return value
        return value

    def operand(self) -> Callable[[], Any]:
        w = self.words[self.pos]
        self.pos += 1
        if w == "(":
            inner = _Eval(self.words, self.dot, self.scope)
            inner.pos = self.pos
            thunk = inner.pipeline(stop=")")
            if inner.pos >= len(self.words) or not self.words[inner.pos].startswith(")"):
                raise TemplateError("missing ) in pipeline")
            path = self.words[inner.pos][1:]
            self.pos = inner.pos + 1
            return lambda: _fields(thunk(), path)
        if w in _FUNCS:
            raise TemplateError(f"function {w} used as a value; wrap it in ( )")
        return lambda: self.value(w)

    def value(self, w: str) -> Any:
        if w.startswith('"'):
            return json.loads(w)
        if w.startswith("`"):
            return w[1:-1]
        if w in ("true", "false"):
            return w == "true"
        if w == "nil":
            return None
        if re.fullmatch(r"-?\d+", w):
            return int(w)
        if w.startswith("."):
            return _fields(self.dot, w)
        if w.startswith("$"):
            name, _, path = w.partition(".")
            return _fields(self.scope.get(name), path)
        raise TemplateError(f"unsupported operand {w!r}")


def _no_pipe() -> Any:
    raise TemplateError("a value cannot take piped input")


_DECL = re.compile(r"^(\$\w*)(?:\s*,\s*(\$\w*))?\s*(:=|=)\s*(.*)$", re.DOTALL)


def _run(expr: str, dot: Any, scope: _Scope) -> Any:
    words = _WORD.findall(expr)
    if not words:
        raise TemplateError("empty action")
    ev = _Eval(words, dot, scope)
    thunk = ev.pipeline()
    if ev.pos != len(words):
        raise TemplateError(f"unexpected {words[ev.pos]!r} in {expr!r}")
    return thunk()


def _render(nodes: list[Any], dot: Any, scope: _Scope, out: list[str]) -> None:
    for n in nodes:
        if isinstance(n, str):
            out.append(n)
            continue
        kind, arg = n[0], n[1]
        if kind == "expr":
            decl = _DECL.match(arg)
            if decl:
                name, _, op, rest = decl.groups()
                value = _run(rest, dot, scope)
                if op == ":=":
                    scope.vars[name] = value
                else:
                    scope.assign(name, value)
                continue
            value = _run(arg, dot, scope)
            out.append("<no value>" if value is None else
                       ("true" if value is True else "false" if value is False else str(value)))
        elif kind in ("if", "with"):
            value = _run(arg, dot, scope)
            inner = _Scope(scope)
            if _truth(value):
                _render(n[2], value if kind == "with" else dot, inner, out)
            else:
                _render(n[3], dot, inner, out)
        elif kind == "range":
            _range(n, dot, scope, out)


def _range(n: Any, dot: Any, scope: _Scope, out: list[str]) -> None:
    decl = _DECL.match(n[1])
    names: tuple[str | None, ...] = (None, None)
    expr = n[1]
    if decl:
        first, second, op, expr = decl.groups()
        if op != ":=":
            raise TemplateError("range needs := to declare its variables")
        names = (first, second) if second else (None, first)
    items = _run(expr, dot, scope)
    if isinstance(items, GoValue):
        items = items.data
    pairs = list(items.items()) if isinstance(items, dict) else list(enumerate(items or []))
    if not pairs:
        _render(n[3], dot, _Scope(scope), out)
    for key, item in pairs:
        inner = _Scope(scope)
        if names[0]:
            inner.vars[names[0]] = key
        if names[1]:
            inner.vars[names[1]] = item
        _render(n[2], item, inner, out)


def execute(template: str, data: Any) -> str:
    """Renders a Go template with data as dot (and $).

    Raises:
        TemplateError: For syntax this interpreter does not support, undefined fields or
            variables, or a malformed template.
    """
    scope = _Scope()
    scope.vars["$"] = data
    out: list[str] = []
    _render(parse(template), data, scope, out)
    return "".join(out)
