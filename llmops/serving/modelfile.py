"""Ollama Modelfiles derived from the training chat template, checked by rendering both. Pure.

Ollama does not run Jinja: its TEMPLATE is a Go text/template over .Messages. A hand-written
guess that differs from the training template by one newline is the most reported cause of a
deployed model answering gibberish. So the Go template comes from a family table keyed by
model.chat_template, and `check_template` renders sample conversations through the training
(Jinja) template and through the Go template (`render_go`, a small interpreter of the
text/template subset used here) and requires identical strings. Stop tokens are the family's
end-of-turn markers that the training template really emits, plus the tokenizer's eos.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

#: Go templates for Ollama, per chat template family. The generation prompt is always appended:
#: Ollama renders the conversation so far and generates the assistant's next turn.
GO_TEMPLATES: dict[str, str] = {
    "chatml": (
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n"
        "{{ .Content }}<|im_end|>\n"
        "{{ end }}<|im_start|>assistant\n"
    ),
    "llama3": (
        "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
        "{{ .Content }}<|eot_id|>"
        "{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
}
#: End-of-turn markers per family; a marker becomes a stop token only if the template emits it.
STOP_MARKERS: dict[str, tuple[str, ...]] = {
    "chatml": ("<|im_end|>", "<|im_start|>"),
    "llama3": ("<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"),
}
#: Conversations rendered both ways by check_template (each ends on a user turn).
SAMPLE_CONVERSATIONS: tuple[list[dict[str, str]], ...] = (
    [{"role": "user", "content": "Add a task to buy milk due 2025-03-14."}],
    [{"role": "system", "content": "You are a Task-API assistant. Answer with one tool call."},
     {"role": "user", "content": "List my open tasks."}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "Delete task 42."},
     {"role": "assistant", "content": '{"tool": "delete_task", "args": {"id": 42}}'},
     {"role": "user", "content": "  And task 43, please.\n"}],
)

_TOKEN = re.compile(r"\{\{(-\s+)?(.*?)(\s+-)?\}\}", re.DOTALL)


class TemplateError(ValueError):
    """A Go template uses something this interpreter does not support, or is malformed."""


def _parse(template: str) -> list[Any]:
    """Parses the Go template into a tree of text, {{ expr }}, range and if nodes."""
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
        parts.append(("action", m.group(2).strip()))
        trim_next, pos = bool(m.group(3)), m.end()
    tail = template[pos:].lstrip(" \t\r\n") if trim_next else template[pos:]
    if tail:
        parts.append(tail)

    def block(i: int, stop: tuple[str, ...]) -> tuple[list[Any], int, str]:
        nodes: list[Any] = []
        while i < len(parts):
            p = parts[i]
            if isinstance(p, str):
                nodes.append(p)
                i += 1
                continue
            act = p[1]
            word = act.split(None, 1)[0] if act else ""
            if word in stop:
                return nodes, i + 1, word
            if word in ("range", "if"):
                body, i, ended = block(i + 1, ("end", "else"))
                other: list[Any] = []
                if ended == "else":
                    other, i, _ = block(i, ("end",))
                nodes.append((word, act[len(word):].strip(), body, other))
                continue
            if word in ("end", "else"):
                raise TemplateError(f"unexpected {{{{ {act} }}}}")
            nodes.append(("expr", act))
            i += 1
        if stop:
            raise TemplateError(f"missing {{{{ end }}}} (expected one of {stop})")
        return nodes, i, ""

    return block(0, ())[0]


_FUNCS: dict[str, Callable[..., Any]] = {
    "eq": lambda a, *b: any(a == x for x in b),
    "ne": lambda a, b: a != b,
    "not": lambda a: not a,
    "and": lambda *a: all(a),
    "or": lambda *a: any(a),
    "len": len,
}


def _value(word: str, dot: Any, root: Any) -> Any:
    if word.startswith('"') and word.endswith('"'):
        return word[1:-1]
    if word == ".":
        return dot
    if word.startswith("$."):
        obj, path = root, word[2:]
    elif word.startswith("."):
        obj, path = dot, word[1:]
    else:
        raise TemplateError(f"unsupported operand {word!r}")
    for name in path.split("."):
        obj = obj[name] if isinstance(obj, dict) else getattr(obj, name)
    return obj


def _eval(expr: str, dot: Any, root: Any) -> Any:
    words = re.findall(r'"[^"]*"|\S+', expr)
    if not words:
        raise TemplateError("empty action")
    if words[0] in _FUNCS:
        return _FUNCS[words[0]](*(_value(w, dot, root) for w in words[1:]))
    if len(words) != 1:
        raise TemplateError(f"unsupported pipeline {expr!r}")
    return _value(words[0], dot, root)


def _render(nodes: list[Any], dot: Any, root: Any, out: list[str]) -> None:
    for n in nodes:
        if isinstance(n, str):
            out.append(n)
        elif n[0] == "expr":
            out.append(str(_eval(n[1], dot, root)))
        elif n[0] == "if":
            _render(n[2] if _eval(n[1], dot, root) else n[3], dot, root, out)
        elif n[0] == "range":
            items = _eval(n[1], dot, root)
            if items:
                for item in items:
                    _render(n[2], item, root, out)
            else:
                _render(n[3], dot, root, out)


def render_go(template: str, messages: Sequence[dict[str, str]], system: str = "") -> str:
    """Renders an Ollama Go chat template for a conversation the way Ollama fills it in.

    Supports text/template's trim markers, {{ .Field }}, {{ $.Field }}, range/if/else/end and the
    functions eq, ne, not, and, or, len; anything else raises TemplateError.
    """
    msgs = [{"Role": m["role"], "Content": m["content"]} for m in messages]
    root = {"Messages": msgs, "System": system, "Prompt": "", "Response": ""}
    out: list[str] = []
    _render(_parse(template), root, root, out)
    return "".join(out)


def go_template(family: str) -> str:
    """Returns the Ollama Go template of a chat template family (model.chat_template)."""
    if family not in GO_TEMPLATES:
        raise KeyError(f"no Ollama template for chat_template {family!r}; "
                       f"known: {', '.join(GO_TEMPLATES)}")
    return GO_TEMPLATES[family]


def stop_tokens(family: str, training_template: str, eos_token: str | None) -> list[str]:
    """Returns the stop tokens: eos plus the family's turn markers the training template emits."""
    stops = [eos_token] if eos_token else []
    stops += [s for s in STOP_MARKERS.get(family, ()) if s in training_template]
    return list(dict.fromkeys(stops))


def check_template(render_training: Callable[[list[dict[str, str]]], str], family: str,
                   bos_token: str | None = None,
                   conversations: Sequence[list[dict[str, str]]] = SAMPLE_CONVERSATIONS
                   ) -> dict[str, Any]:
    """Renders each conversation through the training template and the Go template; compares.

    Args:
        render_training: messages -> the training template's prompt (add_generation_prompt=True),
            e.g. a tokenizer's apply_chat_template.
        family: model.chat_template.
        bos_token: Stripped from the start of the training render: in a GGUF the tokenizer adds it.
        conversations: Sample conversations, each ending on a user turn.

    Returns:
        {identical, conversations, mismatches: [{index, training, ollama}]}.
    """
    template = go_template(family)
    mismatches = []
    for i, conv in enumerate(conversations):
        want = render_training(list(conv))
        if bos_token and want.startswith(bos_token):
            want = want[len(bos_token):]
        got = render_go(template, conv)
        if got != want:
            mismatches.append({"index": i, "training": want, "ollama": got})
    return {"identical": not mismatches, "conversations": len(conversations),
            "mismatches": mismatches}


def modelfile(gguf_path: str, family: str, stops: Sequence[str],
              parameters: dict[str, Any]) -> str:
    """Returns the Modelfile text: FROM the GGUF, the family's TEMPLATE, stops and parameters."""
    template = go_template(family)
    if '"""' in template:
        raise TemplateError('the template contains """, which a Modelfile cannot quote')
    lines = [f"FROM {gguf_path}", f'TEMPLATE """{template}"""']
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    lines += [f"PARAMETER {k} {v}" for k, v in parameters.items()]
    return "\n".join(lines) + "\n"
