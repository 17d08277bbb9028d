"""Export and serving for real families: Qwen2.5 and Llama 3.1 on their real vocabularies and chat
templates (tests/real_models.py), tools included.

- the Ollama Modelfile TEMPLATE (Go) renders what the tokenizer's own template renders, with and
  without tools (no llama.cpp needed);
- GGUF conversion of both families keeps tokens (tool-call text included), the template and the
  greedy answers (needs the gguf extra);
- the OpenAI-compatible endpoint answers `tools=` with structured `tool_calls`, parsed with the
  template's own call syntax (needs the gguf extra).
"""

from __future__ import annotations

import pytest

from llmops.serving.gotemplate import TemplateError, execute
from llmops.serving.modelfile import (
    TOOL_CONVERSATIONS,
    check_template,
    go_template,
    modelfile,
    render_go,
    resolve_family,
    stop_tokens,
)

FAMILIES = {"qwen2": "qwen2.5", "llama": "llama3.1"}


def _render(tokenizer):
    return lambda m, tools=None: tokenizer.apply_chat_template(
        m, tools=tools, tokenize=False, add_generation_prompt=True)


# -- the Go template interpreter ------------------------------------------------------------------

def test_go_interpreter_follows_text_template_rules():
    data = {"A": [{"R": "s", "C": "x"}, {"R": "u", "C": ""}], "B": [], "S": "a<b"}
    tpl = ('{{- $x := 0 }}{{ if and .A (eq (index .A 0).R "s") }}{{ $x = 1 }}{{ end }}x={{ $x }}'
           "{{ range $i, $m := .A }} {{ $i }}:{{ .R }}:{{ len (slice $.A $i) }}"
           "{{ if .C }}+{{ else if eq $m.R \"u\" }}-{{ end }}{{ end }}"
           "{{ if and .B (index .B 5) }} never{{ end }} {{ json .S }} {{ .S | json }}"
           "{{ range .B }}item{{ else }} empty{{ end }}{{/* a comment */}}")
    # and/or short-circuit (index .B 5 is never evaluated), $x = assigns the outer variable,
    # slice $.A 1 is A[1:], json escapes HTML characters as Go's encoding/json does.
    assert execute(tpl, data) == 'x=1 0:s:2+ 1:u:1- "a\\u003cb" "a\\u003cb" empty'
    with pytest.raises(TemplateError, match="missing"):
        execute("{{ if .A }}open", data)
    with pytest.raises(TemplateError, match="can't evaluate field Nope"):
        execute("{{ .Nope }}", data)
    with pytest.raises(TemplateError, match="unsupported command"):
        execute("{{ printf \"%s\" .S }}", data)


# -- Modelfile TEMPLATE == the model's own template, tools included (no llama.cpp) ----------------

@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_modelfile_template_matches_the_real_template_with_and_without_tools(real_model, family):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(real_model(family))
    go_family = resolve_family("chatml" if family == "qwen2" else "llama3", tok.chat_template)
    assert go_family == FAMILIES[family]
    check = check_template(_render(tok), go_family, bos_token=tok.bos_token)
    assert check["tools"] and check["tool_conversations"] == len(TOOL_CONVERSATIONS)
    assert check["mismatches"] == [] and check["equivalent"]
    # Without tools the renders are identical byte for byte; with tools the only difference is
    # Go's compact JSON for schemas and arguments (same data), which Ollama cannot avoid.
    assert all(m["tools"] for m in check["json_formatting"])
    template = go_template(go_family)
    assert ".Tools" in template and ".ToolCalls" in template
    text = modelfile("/m.gguf", go_family, stop_tokens(go_family, tok.chat_template,
                                                       tok.eos_token), {"temperature": 0})
    assert f'TEMPLATE """{template}"""' in text and f'PARAMETER stop "{tok.eos_token}"' in text


def test_qwen_go_template_renders_calls_and_results_like_qwen():
    conv = TOOL_CONVERSATIONS[1]
    from llmops.serving.modelfile import SAMPLE_TOOLS

    got = render_go(go_template("qwen2.5"), conv, tools=SAMPLE_TOOLS)
    assert got.startswith("<|im_start|>system\nYou are a Task-API assistant.\n\n# Tools\n")
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "create_task", "arguments": '
            '{"title":"buy milk","due":"2025-03-14"}}\n</tool_call><|im_end|>\n') in got
    assert got.endswith('<|im_start|>user\n<tool_response>\n{"id": 7, "status": "created"}\n'
                        "</tool_response><|im_end|>\n<|im_start|>assistant\n")
    # No system message: Qwen's own default system text, as its template writes it.
    plain = render_go(go_template("qwen2.5"), [{"role": "user", "content": "hi"}])
    assert plain == ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a "
                     "helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                     "<|im_start|>assistant\n")


def test_llama_go_template_puts_tools_in_the_first_user_turn():
    from llmops.serving.modelfile import SAMPLE_TOOLS

    got = render_go(go_template("llama3.1"), TOOL_CONVERSATIONS[2], tools=SAMPLE_TOOLS)
    first_user = got.split("<|start_header_id|>user<|end_header_id|>\n\n")[1]
    assert first_user.startswith("Given the following functions")
    assert '{"name":"create_task"' in first_user and "Add a task" in first_user
    assert ('<|start_header_id|>assistant<|end_header_id|>\n\n{"name": "create_task", '
            '"parameters": {"title":"buy milk","due":"2025-03-14"}}<|eot_id|>') in got
    assert '<|start_header_id|>ipython<|end_header_id|>\n\n"{\\"id\\": 7' in got


def test_a_template_of_another_family_is_caught(real_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(real_model("qwen2"))
    # The generic ChatML template misses Qwen2.5's default system turn and its tool syntax.
    check = check_template(_render(tok), "chatml")
    assert not check["equivalent"] and check["mismatches"][0]["index"] == 0
    assert "You are Qwen" in check["mismatches"][0]["training"]
