"""Ollama Modelfiles derived from the training chat template, checked by rendering both. Pure.

Ollama does not run Jinja: its TEMPLATE is a Go text/template over .System, .Messages (.Role,
.Content, .ToolCalls) and .Tools. A hand-written guess that differs from the training template by
one newline is the most reported cause of a deployed model answering gibberish. So the Go template
comes from a table of template families, the family is read off the training template itself
(`resolve_family`; model.chat_template names it when the text does not), and `check_template`
renders sample conversations, with and without tools, through the training (Jinja) template and
through the Go template (`llmops.serving.gotemplate`, an interpreter of the text/template subset
used here, fed the values Ollama builds) and compares them.

Go's encoding/json prints .Tools and tool-call arguments compactly, where most Jinja templates
write `tojson` with spaces (or indented): no Go template can reproduce that, so a conversation
whose renders differ only inside JSON values (same data, other spacing) counts as equivalent and
is listed under `json_formatting`; every other difference is a mismatch. Stop tokens are the
family's end-of-turn markers that the training template really emits, plus the tokenizer's eos.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from llmops.serving.gotemplate import GoValue, TemplateError, execute

__all__ = ["REASONING_CONVERSATIONS", "TemplateError", "argument", "check_template",
           "go_template", "modelfile", "ollama_values", "render_go", "resolve_family",
           "stop_tokens"]

_QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

#: Go templates for Ollama, per chat template family. The generation prompt is always appended:
#: Ollama renders the conversation so far and generates the assistant's next turn.
GO_TEMPLATES: dict[str, str] = {
    # ChatML; tools as llmops's tiny template writes them (a "Tools:" line of names in the system
    # turn, one {"tool": NAME, "arguments": {...}} line per call).
    "chatml": (
        '{{- if and .Tools (or (not .Messages) (ne (index .Messages 0).Role "system")) }}'
        "<|im_start|>system\nTools:{{ range .Tools }} {{ .Function.Name }}{{ end }}<|im_end|>\n"
        "{{ end }}"
        "{{- range $i, $m := .Messages }}"
        '{{- if eq .Role "assistant" }}<|im_start|>assistant\n{{ .Content }}'
        "{{- range $j, $c := .ToolCalls }}{{ if or $m.Content $j }}\n{{ end }}"
        '{"tool":{{ json .Function.Name }},"arguments":{{ .Function.Arguments }}}{{ end }}'
        "<|im_end|>\n"
        '{{ else if and (eq .Role "system") (eq $i 0) $.Tools }}<|im_start|>system\n'
        "{{ .Content }}\nTools:{{ range $.Tools }} {{ .Function.Name }}{{ end }}<|im_end|>\n"
        "{{ else }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
        "{{ end }}"
        "{{- end }}<|im_start|>assistant\n"
    ),
    "llama3": (
        "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
        "{{ .Content }}<|eot_id|>"
        "{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    # Qwen2.5 (its tokenizer's template): a system turn always (Qwen's default text when none is
    # given), tools in <tools></tools>, calls as <tool_call> blocks, tool results as
    # <tool_response> blocks inside one user turn per run of tool messages.
    "qwen2.5": (
        '{{- $sys := and .Messages (eq (index .Messages 0).Role "system") }}'
        "<|im_start|>system\n{{ if $sys }}{{ (index .Messages 0).Content }}{{ else }}"
        + _QWEN_DEFAULT_SYSTEM + "{{ end }}"
        "{{ if .Tools }}\n\n# Tools\n\nYou may call one or more functions to assist with the user "
        "query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n"
        "<tools>{{ range .Tools }}\n{{ . }}{{ end }}\n</tools>\n\nFor each function call, return "
        "a json object with function name and arguments within <tool_call></tool_call> XML tags:"
        '\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
        "{{ end }}<|im_end|>\n"
        '{{ $prev := "" }}'
        "{{- range $i, $m := .Messages }}"
        '{{- if or (eq .Role "user") (and (eq .Role "system") $i) '
        '(and (eq .Role "assistant") (not .ToolCalls)) }}'
        "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
        '{{ else if eq .Role "assistant" }}<|im_start|>assistant{{ if .Content }}\n'
        "{{ .Content }}{{ end }}"
        '{{ range .ToolCalls }}\n<tool_call>\n{"name": "{{ .Function.Name }}", "arguments": '
        "{{ .Function.Arguments }}}\n</tool_call>{{ end }}<|im_end|>\n"
        '{{ else if eq .Role "tool" }}{{ if ne $prev "tool" }}<|im_start|>user{{ end }}'
        "\n<tool_response>\n{{ .Content }}\n</tool_response>"
        "{{ if or (eq (len (slice $.Messages $i)) 1) "
        '(ne (index (slice $.Messages $i) 1).Role "tool") }}<|im_end|>\n{{ end }}'
        "{{ end }}{{ $prev = .Role }}"
        "{{- end }}<|im_start|>assistant\n"
    ),
    # Llama 3.1 (its tokenizer's template, tools_in_user_message): the system header with the
    # knowledge/today dates, tools in the first user turn, a call as {"name", "parameters"} JSON,
    # tool results as ipython turns holding the result as a JSON string.
    "llama3.1": (
        "{{- $start := 0 }}<|start_header_id|>system<|end_header_id|>\n\n"
        "{{ if .Tools }}Environment: ipython\n{{ end }}"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
        '{{ if and .Messages (eq (index .Messages 0).Role "system") }}{{ $start = 1 }}'
        "{{ (index .Messages 0).Content }}{{ end }}<|eot_id|>"
        "{{- range $i, $m := .Messages }}"
        "{{- if lt $i $start }}"
        "{{- else if and $.Tools (eq $i $start) }}<|start_header_id|>user<|end_header_id|>\n\n"
        "Given the following functions, please respond with a JSON for a function call with its "
        "proper arguments that best answers the given prompt.\n\n"
        'Respond in the format {"name": function name, "parameters": dictionary of argument name '
        "and its value}.Do not use variables.\n\n"
        "{{ range $.Tools }}{{ . }}\n\n{{ end }}{{ .Content }}<|eot_id|>"
        '{{- else if eq .Role "tool" }}<|start_header_id|>ipython<|end_header_id|>\n\n'
        "{{ json .Content }}<|eot_id|>"
        "{{- else if .ToolCalls }}<|start_header_id|>assistant<|end_header_id|>\n\n"
        '{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "parameters": '
        "{{ .Function.Arguments }}}{{ end }}<|eot_id|>"
        "{{- else }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
        "{{- end }}"
        "{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    # Qwen3 (TRL's qwen3.jinja, its tokenizer's): as Qwen2.5 without the default system turn;
    # an assistant turn after the last user message writes its reasoning (Ollama's .Thinking) in
    # a <think> block, earlier turns none.
    "qwen3": (
        '{{- $last := -1 }}{{ range $i, $m := .Messages }}{{ if eq .Role "user" }}'
        "{{ $last = $i }}{{ end }}{{ end }}"
        '{{- $sys := and .Messages (eq (index .Messages 0).Role "system") }}'
        "{{- if .Tools }}<|im_start|>system\n{{ if $sys }}{{ (index .Messages 0).Content }}\n\n"
        "{{ end }}# Tools\n\nYou may call one or more functions to assist with the user query."
        "\n\nYou are provided with function signatures within <tools></tools> XML tags:\n"
        "<tools>{{ range .Tools }}\n{{ . }}{{ end }}\n</tools>\n\nFor each function call, return "
        "a json object with function name and arguments within <tool_call></tool_call> XML tags:"
        '\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
        "<|im_end|>\n"
        "{{ else if $sys }}<|im_start|>system\n{{ (index .Messages 0).Content }}<|im_end|>\n"
        "{{ end }}"
        '{{- $prev := "" }}'
        "{{- range $i, $m := .Messages }}"
        '{{- if or (eq .Role "user") (and (eq .Role "system") $i) }}'
        "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
        '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n'
        "{{ if and (gt $i $last) (or .Thinking (eq (len (slice $.Messages $i)) 1)) }}"
        "<think>\n{{ .Thinking }}\n</think>\n\n{{ end }}{{ .Content }}"
        "{{ range $j, $c := .ToolCalls }}{{ if or $m.Content $j }}\n{{ end }}"
        '<tool_call>\n{"name": "{{ .Function.Name }}", "arguments": '
        "{{ .Function.Arguments }}}\n</tool_call>{{ end }}<|im_end|>\n"
        '{{ else if eq .Role "tool" }}{{ if ne $prev "tool" }}<|im_start|>user{{ end }}'
        "\n<tool_response>\n{{ .Content }}\n</tool_response>"
        "{{ if or (eq (len (slice $.Messages $i)) 1) "
        '(ne (index (slice $.Messages $i) 1).Role "tool") }}<|im_end|>\n{{ end }}'
        "{{ end }}{{ $prev = .Role }}"
        "{{- end }}<|im_start|>assistant\n"
    ),
}
#: What the training template does that its Go template cannot, per family (recorded in checks).
KNOWN_DIFFERENCES: dict[str, tuple[str, ...]] = {
    "qwen3": ("the training template strips the newlines around a reasoning trace and reads a "
              "<think> block out of an answer's text; Ollama keeps reasoning apart (.Thinking), "
              "so Go templates need neither", "a user message written as a <tool_response> "
              "block counts as a tool result for the training template, as a question here"),
    "llama3.1": ("the training template trims each message's text; Go templates cannot, so a "
                 "message with surrounding whitespace reaches the model with it",),
}
#: Text that identifies a family's template (every snippet must occur), checked in this order.
_SIGNATURES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("qwen3", ("<tool_call>", "<tool_response>", "<think>", "reasoning_content")),
    ("qwen2.5", ("<tool_call>", "<tool_response>", "You are Qwen, created by Alibaba Cloud")),
    ("llama3.1", ("<|start_header_id|>", "Environment: ipython", "Cutting Knowledge Date")),
)
#: End-of-turn markers per family; a marker becomes a stop token only if the template emits it.
STOP_MARKERS: dict[str, tuple[str, ...]] = {
    "chatml": ("<|im_end|>", "<|im_start|>"),
    "qwen2.5": ("<|im_end|>", "<|im_start|>"),
    "qwen3": ("<|im_end|>", "<|im_start|>"),
    "llama3": ("<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"),
    "llama3.1": ("<|eot_id|>", "<|eom_id|>", "<|start_header_id|>", "<|end_header_id|>"),
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
SAMPLE_TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {
        "name": "create_task", "description": "Creates a task.",
        "parameters": {"type": "object", "properties": {
            "title": {"type": "string", "description": "What to do."},
            "due": {"type": "string", "description": "Due date, YYYY-MM-DD."}},
            "required": ["title"]}}},
    {"type": "function", "function": {
        "name": "list_tasks", "description": "Lists tasks.",
        "parameters": {"type": "object", "properties": {
            "status": {"type": "string", "description": "Which tasks.",
                       "enum": ["open", "done"]}}, "required": []}}},
]
_CALL = {"type": "function", "function": {"name": "create_task",
                                          "arguments": {"title": "buy milk", "due": "2025-03-14"}}}
#: Conversations with tools (a call, its result, an answer), each ending on a user or tool turn.
TOOL_CONVERSATIONS: tuple[list[dict[str, Any]], ...] = (
    [{"role": "user", "content": "Add a task to buy milk due 2025-03-14."}],
    [{"role": "system", "content": "You are a Task-API assistant."},
     {"role": "user", "content": "Add a task to buy milk due 2025-03-14."},
     {"role": "assistant", "content": "", "tool_calls": [_CALL]},
     {"role": "tool", "content": '{"id": 7, "status": "created"}'}],
    [{"role": "user", "content": "Add a task to buy milk due 2025-03-14."},
     {"role": "assistant", "content": "", "tool_calls": [_CALL]},
     {"role": "tool", "content": '{"id": 7, "status": "created"}'},
     {"role": "assistant", "content": "Done: task 7 is created."},
     {"role": "user", "content": "Now list my open tasks."}],
)

#: Conversations whose assistant turns carry reasoning (``reasoning_content``, Ollama's
#: .Thinking), checked where the training template renders it, and probed by the gguf stage:
#: an earlier turn's (Qwen3 drops it), and a call's after the last user turn (Qwen3 writes it).
REASONING_CONVERSATIONS: tuple[list[dict[str, Any]], ...] = (
    [{"role": "user", "content": "What is 17 + 25?"},
     {"role": "assistant", "content": "42.",
      "reasoning_content": "17 + 25: 17 + 20 = 37, then 37 + 5 = 42. Café 🦙."},
     {"role": "user", "content": "And 42 + 1?"}],
    [{"role": "user", "content": "Add a task to buy milk due 2025-03-14."},
     {"role": "assistant", "content": "", "reasoning_content": "The user wants a task: milk.",
      "tool_calls": [_CALL]},
     {"role": "tool", "content": '{"id": 7, "status": "created"}'}],
)


def _arguments(value: Any) -> Any:
    """Returns call arguments as Ollama holds them: an object (JSON text is parsed)."""
    if isinstance(value, str):
        try:
            return json.loads(value) if value.strip() else {}
        except json.JSONDecodeError:
            return value
    return {} if value is None else value


def _go_map(value: Any) -> Any:
    """Returns value as Go holds a JSON object in a map[string]any: json.Marshal sorts its keys."""
    if isinstance(value, dict):
        return {k: _go_map(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_go_map(v) for v in value]
    return value


def _property(p: dict[str, Any]) -> dict[str, Any]:
    """Returns a parameter schema as Ollama's api.ToolProperty holds it: only anyOf, type, items,
    description (always, "" when absent) and enum, in that order; other JSON-schema keywords
    (pattern, minimum, ...) are dropped, as Ollama drops them."""
    kind = p.get("type")
    out: dict[str, Any] = {}
    if p.get("anyOf"):
        out["anyOf"] = [_property(a) for a in p["anyOf"]]
    out["type"] = kind[0] if isinstance(kind, list) and len(kind) == 1 else kind
    if p.get("items") is not None:
        out["items"] = _go_map(p["items"])
    out["description"] = p.get("description") or ""
    if p.get("enum"):
        out["enum"] = p["enum"]
    return out


def _ollama_function(fn: dict[str, Any]) -> dict[str, Any]:
    """Returns a tool's function as Ollama's api.ToolFunction prints it (field order, map keys
    sorted, the schema keywords it knows)."""
    params = fn.get("parameters") or {}
    shaped: dict[str, Any] = {"type": params.get("type") or ""}
    for key in ("$defs", "items"):
        if params.get(key) is not None:
            shaped[key] = _go_map(params[key])
    props = params.get("properties")
    shaped["required"] = params.get("required")
    shaped["properties"] = (None if props is None
                            else {k: _property(props[k]) for k in sorted(props)})
    return {"name": fn["name"], "description": fn.get("description") or "",
            "parameters": shaped}


def _message(m: dict[str, Any]) -> GoValue:
    calls = []
    for c in m.get("tool_calls") or []:
        fn = c.get("function", c)
        args = _go_map(_arguments(fn.get("arguments")))
        function = GoValue({"name": fn["name"], "arguments": args}, {
            "Name": fn["name"], "Arguments": GoValue(args, truthy=bool(args))})
        calls.append(GoValue({"function": function.data}, {"Function": function}))
    content = m.get("content") or ""
    return GoValue(m, {"Role": m["role"], "Content": content, "ToolCalls": calls,
                       "ToolName": m.get("name") or "",
                       "Thinking": m.get("reasoning_content") or m.get("thinking") or ""})


def _tool(t: dict[str, Any]) -> GoValue:
    fn = _ollama_function(t.get("function", t))
    function = GoValue(fn, {"Name": fn["name"], "Description": fn["description"],
                            "Parameters": GoValue(fn["parameters"])})
    return GoValue({"type": t.get("type", "function"), "function": fn},
                   {"Type": t.get("type", "function"), "Function": function})


def ollama_values(messages: Sequence[dict[str, Any]], tools: Sequence[dict] | None = None,
                  system: str = "") -> dict[str, Any]:
    """Returns the values Ollama executes a chat template with, for an OpenAI-style chat.

    As Ollama's template.collate does: .System joins every system message's text, consecutive
    messages of one role (tool messages aside) are merged with a blank line, system messages stay
    in .Messages. `system` (a Modelfile SYSTEM) applies when the chat has no system message.
    """
    msgs = [dict(m) for m in messages]
    if system and not any(m["role"] == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": system})
    collated: list[dict[str, Any]] = []
    for m in msgs:
        if collated and collated[-1]["role"] == m["role"] and m["role"] != "tool":
            collated[-1] = {**collated[-1], "content": (collated[-1].get("content") or "")
                            + "\n\n" + (m.get("content") or "")}
        else:
            collated.append(m)
    sys_text = "\n\n".join(m.get("content") or "" for m in msgs if m["role"] == "system")
    return {"System": sys_text, "Messages": [_message(m) for m in collated],
            "Tools": [_tool(t) for t in tools or []], "Prompt": "", "Response": "", "Suffix": ""}


def render_go(template: str, messages: Sequence[dict[str, Any]], system: str = "",
              tools: Sequence[dict] | None = None) -> str:
    """Renders an Ollama Go chat template for a conversation the way Ollama fills it in."""
    return execute(template, ollama_values(messages, tools, system))


def resolve_family(family: str, training_template: str | None) -> str:
    """Returns the Go template family of a training template: read off its text when it is a
    known family's (Qwen2.5, Llama 3.1), else `family` (model.chat_template)."""
    text = training_template or ""
    for name, needles in _SIGNATURES:
        if all(n in text for n in needles):
            return name
    return TRL_FAMILIES.get(family, family)


#: model.chat_template values (TRL template names) -> the Go template family that renders them.
TRL_FAMILIES = {"qwen2_5": "qwen2.5", "llama3_1": "llama3.1", "qwen3": "qwen3"}


def go_template(family: str) -> str:
    """Returns the Ollama Go template of a chat template family (see resolve_family)."""
    if family not in GO_TEMPLATES:
        raise KeyError(f"no Ollama template for chat_template {family!r}; "
                       f"known: {', '.join(GO_TEMPLATES)}")
    return GO_TEMPLATES[family]


def stop_tokens(family: str, training_template: str, eos_token: str | None) -> list[str]:
    """Returns the stop tokens: eos plus the family's turn markers the training template emits."""
    stops = [eos_token] if eos_token else []
    stops += [s for s in STOP_MARKERS.get(family, ()) if s in training_template]
    return list(dict.fromkeys(stops))


def _json_pieces(text: str) -> list[Any]:
    """Splits text into literal characters and parsed JSON objects/arrays (for equivalence)."""
    decoder, out, i, literal = json.JSONDecoder(), [], 0, []
    while i < len(text):
        if text[i] in "{[":
            try:
                value, end = decoder.raw_decode(text, i)
            except json.JSONDecodeError:
                value, end = None, -1
            if end > 0 and isinstance(value, (dict, list)):
                out += ["".join(literal), value]
                literal, i = [], end
                continue
        literal.append(text[i])
        i += 1
    return [*out, "".join(literal)]


def json_equivalent(a: str, b: str) -> bool:
    """Tells whether two renders differ at most in how their JSON values are spaced/ordered."""
    return _json_pieces(a) == _json_pieces(b)


def _renders_tools(render: Callable[..., str]) -> bool:
    conv = TOOL_CONVERSATIONS[0]
    try:
        return render(list(conv), SAMPLE_TOOLS) != render(list(conv), None)
    except Exception:  # noqa: BLE001 - a template that raises on tools does not render them
        return False


def _renders_reasoning(render: Callable[..., str]) -> bool:
    conv = REASONING_CONVERSATIONS[-1]
    try:
        return render(list(conv), SAMPLE_TOOLS) != render(
            [{k: v for k, v in m.items() if k != "reasoning_content"} for m in conv], SAMPLE_TOOLS)
    except Exception:  # noqa: BLE001 - a template that raises on them does not render them
        return False


def check_template(render_training: Callable[..., str], family: str,
                   bos_token: str | None = None,
                   conversations: Sequence[list[dict[str, Any]]] = SAMPLE_CONVERSATIONS,
                   tool_conversations: Sequence[list[dict[str, Any]]] = TOOL_CONVERSATIONS,
                   tools: Sequence[dict] = tuple(SAMPLE_TOOLS)) -> dict[str, Any]:
    """Renders each conversation through the training template and the Go template; compares.

    Args:
        render_training: (messages, tools) -> the training template's prompt
            (add_generation_prompt=True), e.g. a tokenizer's apply_chat_template.
        family: The Go template family (resolve_family).
        bos_token: Stripped from the start of the training render: in a GGUF the tokenizer adds it.
        conversations: Sample conversations without tools.
        tool_conversations: Sample conversations rendered with `tools`; used only when the
            training template renders tools at all.
        tools: The tool schemas of the tool conversations.

    Returns:
        {identical, equivalent, family, conversations, tool_conversations, tools,
        reasoning_conversations (``REASONING_CONVERSATIONS``, checked with the tools where the
        training template renders reasoning), mismatches: [{index, tools, training, ollama}],
        json_formatting: [same shape], known_differences}.
    """
    template = go_template(family)
    known = list(KNOWN_DIFFERENCES.get(family, ()))
    trims = bool(known) and family == "llama3.1"
    with_tools = _renders_tools(render_training)
    cases = [(c, None) for c in conversations]
    if with_tools:
        cases += [(c, list(tools)) for c in tool_conversations]
    reasoning = with_tools and _renders_reasoning(render_training)
    if reasoning:
        cases += [(c, list(tools)) for c in REASONING_CONVERSATIONS]
    mismatches, formatting = [], []
    for i, (conv, tl) in enumerate(cases):
        conv = [dict(m, content=m["content"].strip()) if trims and isinstance(m.get("content"), str)
                else dict(m) for m in conv]
        want = render_training(conv, tl)
        if bos_token and want.startswith(bos_token):
            want = want[len(bos_token):]
        got = render_go(template, conv, tools=tl)
        if got != want:
            entry = {"index": i, "tools": tl is not None, "training": want, "ollama": got}
            (formatting if json_equivalent(got, want) else mismatches).append(entry)
    return {"identical": not mismatches and not formatting, "equivalent": not mismatches,
            "family": family, "conversations": len(conversations),
            "tool_conversations": len(tool_conversations) if with_tools else 0,
            "tools": with_tools,
            "reasoning_conversations": len(REASONING_CONVERSATIONS) if reasoning else 0,
            "mismatches": mismatches, "json_formatting": formatting,
            "known_differences": known}


def argument(value: str, what: str, bare: bool = False, block: bool = False) -> str:
    """Returns value written as one Modelfile argument that Ollama's parser reads back unchanged.

    A Modelfile has no escapes: an argument is a word, "text" or \"\"\"text\"\"\", and it ends at
    the first space or newline after its closing quote(s); Ollama drops characters that are not
    printable. So a value holding no quote is written as "text" (or bare, when asked and it holds
    no space either), one holding a quote as \"\"\"text\"\"\", and one that cannot be written
    without changing what Ollama reads is refused.

    Args:
        value: The text (a stop token, a path, a template, a system prompt).
        what: What it is, for the error (e.g. "stop token", "TEMPLATE").
        bare: Write a value without quotes, spaces or line breaks as a plain word (FROM).
        block: Always write the value as a \"\"\" block (TEMPLATE, SYSTEM).

    Raises:
        TemplateError: The value holds \"\"\" or a character Ollama drops (a control or format
            character other than tab, CR and LF), or is empty.
    """
    dropped = sorted({c for c in value if not c.isprintable() and c not in "\t\r\n"})
    if not value or '"""' in value or dropped:
        why = ("it is empty" if not value else 'it holds """, which ends a Modelfile block'
               if '"""' in value else f"it holds {', '.join(map(repr, dropped))}, which Ollama "
               "drops from a Modelfile")
        raise TemplateError(f"the {what} {value!r} cannot be written in a Modelfile: {why}")
    if block or '"' in value:
        return f'"""{value}"""'
    if bare and not any(c.isspace() for c in value):
        return value
    return f'"{value}"'


def modelfile(gguf_path: str, family: str, stops: Sequence[str],
              parameters: dict[str, Any], system: str | None = None) -> str:
    """Returns the Modelfile text: FROM the GGUF, the family's TEMPLATE, stops and parameters.

    Every value is written by `argument`, so each instruction is the one llmops meant: a stop
    token or system prompt with a quote or a line break cannot add a line of its own.

    Raises:
        TemplateError: A value cannot be written in a Modelfile (see `argument`).
    """
    template = go_template(family)
    lines = [f"FROM {argument(gguf_path, 'GGUF path', bare=True)}",
             f"TEMPLATE {argument(template, 'TEMPLATE', block=True)}"]
    if system is not None:
        lines.append(f"SYSTEM {argument(system, 'SYSTEM prompt', block=True)}")
    lines += [f"PARAMETER stop {argument(s, 'stop token')}" for s in stops]
    lines += [f"PARAMETER {k} {argument(str(v), f'PARAMETER {k}', bare=True)}"
              for k, v in parameters.items()]
    return "\n".join(lines) + "\n"


def checked_modelfile(tokenizer: Any, chat_template: str, gguf_from: str, context_length: int,
                      who: str) -> dict[str, Any]:
    """Builds the Modelfile of a GGUF from the model's own template, after checking that its Go
    TEMPLATE renders sample conversations (with and without tools) like the training template.

    Args:
        tokenizer: The model's tokenizer (its chat template is the training template).
        chat_template: The compiled model.chat_template (the fallback family).
        gguf_from: What the Modelfile's FROM names (a path).
        context_length: The model's context, for num_ctx.
        who: The stage name, for the error messages.

    Returns:
        {"text": the Modelfile, "family", "check": check_template's result, "stop": stop tokens,
        "parameters": its PARAMETER lines}.

    Raises:
        StageError: If no Go template renders this family, or the renders differ beyond JSON
            spacing.
    """
    from llmops.data.chat import render
    from llmops.errors import StageError

    family = resolve_family(chat_template, tokenizer.chat_template)
    if family not in GO_TEMPLATES:
        raise StageError(
            f"{who}: no Ollama template renders this model's chat template "
            f"(model.chat_template={chat_template!r}); llmops writes Ollama templates for "
            f"{', '.join(GO_TEMPLATES)} (Qwen2.5's and Llama 3.1's tool-call formats included). "
            "Use deploy=openai, which serves the GGUF with its own template, or "
            "model.chat_template=qwen2_5 / llama3_1 if the model was trained on that format.")
    check = check_template(
        lambda m, tools: render(tokenizer, m, tools, add_generation_prompt=True),
        family, bos_token=tokenizer.bos_token)
    if not check["equivalent"]:
        first = check["mismatches"][0]
        raise StageError(
            f"{who}: the Ollama template for chat_template={family!r} renders conversation "
            f"{first['index']} (tools: {first['tools']}) differently from the training template:"
            f"\n  training: {first['training']!r}\n  ollama:   {first['ollama']!r}\nSet "
            "model.chat_template to the family the tokenizer's template belongs to.")
    stops = stop_tokens(family, tokenizer.chat_template or "", tokenizer.eos_token)
    parameters = {"temperature": 0, "num_ctx": int(context_length)}
    try:
        text = modelfile(gguf_from, family, stops, parameters)
    except TemplateError as exc:
        raise StageError(
            f"{who}: {exc}. The stop tokens are the tokenizer's eos_token "
            f"({tokenizer.eos_token!r}) and the template's turn markers; fix eos_token in the "
            "model folder's tokenizer_config.json, or use deploy=openai (no Modelfile).") from exc
    return {"text": text, "family": family, "check": check, "stop": stops,
            "parameters": parameters}
