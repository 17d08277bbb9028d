"""Export and serving for real families: Qwen2.5 and Llama 3.1 on their real vocabularies and chat
templates (tests/real_models.py), tools included.

- the Ollama Modelfile TEMPLATE (Go) renders what the tokenizer's own template renders, with and
  without tools (no llama.cpp needed);
- the GGUF parity probes hold each family's tool calls (the conversion of both families, keeping
  tokens, template and greedy answers, is checked on the family runs of
  tests/e2e/test_real_family_e2e.py);
- the OpenAI-compatible endpoint answers `tools=` with structured `tool_calls`, parsed with the
  template's own call syntax (needs the gguf extra).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

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
def test_modelfile_template_matches_the_real_template_with_and_without_tools(real_tokenizer,
                                                                               family):

    tok = real_tokenizer(family)
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
    # Arguments are a Go map in Ollama: json.Marshal sorts the keys (tests/serving/
    # test_gotemplate_go.py checks this against Go itself).
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "create_task", "arguments": '
            '{"due":"2025-03-14","title":"buy milk"}}\n</tool_call><|im_end|>\n') in got
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
            '"parameters": {"due":"2025-03-14","title":"buy milk"}}<|eot_id|>') in got
    assert '<|start_header_id|>ipython<|end_header_id|>\n\n"{\\"id\\": 7' in got


def test_a_template_of_another_family_is_caught(real_tokenizer):

    tok = real_tokenizer("qwen2")
    # The generic ChatML template misses Qwen2.5's default system turn and its tool syntax.
    check = check_template(_render(tok), "chatml")
    assert not check["equivalent"] and check["mismatches"][0]["index"] == 0
    assert "You are Qwen" in check["mismatches"][0]["training"]


# -- tool calls read back with the template's own syntax (no llama.cpp) ---------------------------

def test_completions_become_openai_tool_calls_in_the_templates_syntax(real_tokenizer,
                                                                       chat_template):

    from llmops.serving.tool_calls import calls_from_text

    qwen = real_tokenizer("qwen2").chat_template
    text = ('Sure.\n<tool_call>\n{"name": "create_task", "arguments": {"title": "buy milk", '
            '"due": "2025-03-14"}}\n</tool_call>')
    content, calls = calls_from_text(text, qwen)
    assert content == "Sure." and len(calls) == 1
    assert calls[0]["type"] == "function" and calls[0]["id"].startswith("call_")
    assert calls[0]["function"]["name"] == "create_task"
    assert json.loads(calls[0]["function"]["arguments"]) == {"title": "buy milk",
                                                            "due": "2025-03-14"}
    # The tiny template's syntax: one {"tool", "arguments"} line per call.
    content, calls = calls_from_text('{"tool":"delete_task","arguments":{"task_id":42}}\n'
                                     '{"tool":"list_tasks","arguments":{}}', chat_template)
    assert content is None
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("delete_task", {"task_id": 42}), ("list_tasks", {})]
    # No call: the text stays content.
    assert calls_from_text("I can only manage tasks.", qwen) == ("I can only manage tasks.", [])
    # A double-encoded call (arguments a JSON string) is no call: the endpoint does not pass it
    # off as a well-formed OpenAI call; the text comes back as content.
    doubled = ('<tool_call>\n{"name": "create_task", "arguments": "{\\"title\\": \\"x\\"}"}'
               '\n</tool_call>')
    assert calls_from_text(doubled, qwen) == (doubled, [])


@pytest.fixture(scope="module")
def chat_template():
    from llmops.backends.tiny import CHATML_TEMPLATE

    return CHATML_TEMPLATE


# -- with the gguf extra --------------------------------------------------------------------------

from fixtures_model import needs_gguf  # noqa: E402


def _serve(gguf_path: Path, log: Path, alias: str = "m") -> tuple[subprocess.Popen, str]:
    """Starts `python -m llmops.serving.llama_cpp_runtime` as deploy does; returns it, base_url."""
    from llmops.stages.deploy import _free_port, _get

    port = _free_port("127.0.0.1")
    cmd = [sys.executable, "-m", "llmops.serving.llama_cpp_runtime", "--model", str(gguf_path),
           "--host", "127.0.0.1", "--port", str(port), "--model_alias", alias, "--n_ctx", "1024",
           "--n_threads", "1", "--chat_format", "llmops-tools"]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while _get(f"{base_url}/models", 1.0, 10.0) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.25)
    return proc, base_url


@pytest.fixture(scope="module")
def demo_base(tmp_path_factory, stage_params) -> Path:
    """Returns a tiny base pre-trained briefly on create_task/list_tasks calls in the template's
    syntax (the session's tiny_base is too short-trained to write calls; the demo's full
    pre-training takes minutes on a shared CPU)."""
    from llmops.core.context import StageContext
    from llmops.stages import tiny_base as base_stage

    out = tmp_path_factory.mktemp("demo_base")
    ctx = StageContext(run_dir=out, show_progress=False, logger=logging.getLogger("test"))
    params = stage_params("base", "model.pretrain.n_examples=400", "model.pretrain.steps=200",
                          "model.pretrain.batch_size=8", "model.pretrain.legacy_tools=[]",
                          "model.pretrain.include_refusals=false")
    base_stage.run(params, {}, out, ctx)
    return out


@needs_gguf
def test_endpoint_answers_tools_with_structured_tool_calls(tmp_path, demo_base, sft_data):
    """The demo's tiny base (pre-trained on Task-API calls) served from a real GGUF through the
    openai client with tools=[...]: its calls come back as message.tool_calls."""
    from openai import OpenAI

    from llmops.data.task_api import TOOLS
    from llmops.files import read_jsonl
    from llmops.serving.integration import chat_request
    from llmops.stages import gguf

    path = tmp_path / "model-f16.gguf"
    gguf.convert(gguf._overlay(demo_base, tmp_path / ".hf"), path, "f16", "gpt-2",
                 logging.getLogger("test"))
    proc, base_url = _serve(path, tmp_path / "server.log")
    try:
        client = OpenAI(base_url=base_url, api_key="not-needed", max_retries=0, timeout=120)
        rows = [r for r in read_jsonl(sft_data / "train.jsonl")
                if r["messages"][-1].get("tool_calls") and r["messages"][-1]["tool_calls"][0][
                    "function"]["name"] in ("create_task", "list_tasks")][:4]
        replies = []
        for row in rows:
            messages, tools = chat_request(row)
            assert tools and messages[-1]["role"] == "user"
            replies.append(client.chat.completions.create(
                model="m", messages=messages, tools=tools, max_tokens=48, temperature=0.0,
                seed=0, extra_body={"repeat_penalty": 1.0}).choices[0])
        with_calls = [c for c in replies if c.message.tool_calls]
        assert with_calls, [c.message.content for c in replies]
        for choice in with_calls:
            assert choice.finish_reason == "tool_calls"
            for call in choice.message.tool_calls:
                assert call.type == "function" and call.id.startswith("call_")
                assert call.function.name in TOOLS
                assert isinstance(json.loads(call.function.arguments), dict)
        # tool_choice: one named function is forced (llama-cpp-python's grammar path); "none"
        # renders no tools and parses nothing.
        messages, tools = chat_request(rows[0])
        forced = client.chat.completions.create(
            model="m", messages=messages, tools=tools, max_tokens=48, temperature=0.0,
            tool_choice={"type": "function", "function": {"name": "list_tasks"}},
            extra_body={"repeat_penalty": 1.0}).choices[0]
        assert [c.function.name for c in forced.message.tool_calls] == ["list_tasks"]
        assert isinstance(json.loads(forced.message.tool_calls[0].function.arguments), dict)
        none = client.chat.completions.create(
            model="m", messages=messages, tools=tools, tool_choice="none", max_tokens=16,
            temperature=0.0).choices[0]
        assert none.message.tool_calls is None and isinstance(none.message.content, str)
        # Without tools the same server answers plain text through the same template.
        plain = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "List my open tasks."}],
            max_tokens=16, temperature=0.0).choices[0]
        assert plain.message.tool_calls is None and isinstance(plain.message.content, str)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_gguf_parity_probes_hold_the_familys_tool_calls(real_tokenizer, family):
    """The gguf stage's probes render the tool conversations in the family's own call syntax.
    (Conversion of both families, tokens, template and greedy answers identical: the family runs
    of tests/e2e/test_real_family_e2e.py, test_merge_and_gguf_keep_...)"""
    from llmops.stages import gguf

    probes = gguf.template_probes(real_tokenizer(family))
    needle = {"qwen2": '<tool_call>\n{"name": "create_task", "arguments": {"title": "buy milk"',
              "llama": '{"name": "create_task", "parameters": {"title": "buy milk"'}[family]
    assert len(probes) == len(TOOL_CONVERSATIONS) and needle in probes[1]


# -- deploy for a real family: Modelfile and integration_config.json (no llama.cpp) ---------------

def test_deploy_ollama_for_qwen_writes_its_template_and_the_datas_tools(
        tmp_path, real_tokenizer, sft_data, stage_params):
    import socket

    from llmops.core.context import StageContext
    from llmops.data.task_api import TOOL_SCHEMAS
    from llmops.stages import deploy

    export = tmp_path / "export"
    real_tokenizer("qwen2").save_pretrained(export / "merged")
    gguf_dir = tmp_path / "gguf"
    gguf_dir.mkdir()
    (gguf_dir / "model-f16.gguf").write_bytes(b"GGUF" + bytes(64))
    (gguf_dir / "gguf_report.json").write_text(json.dumps(
        {"quantization": ["f16"], "files": {"f16": {"path": "model-f16.gguf", "parity": {}}}}))
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    (eval_dir / "eval_report.json").write_text(json.dumps({"passed": True, "gates": []}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        host = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once closed
    params = stage_params("deploy", "deploy=ollama")
    params["ollama"].update(host=host, timeout_s=2.0)
    params["serve_quantization"] = "f16"
    out = tmp_path / "out"
    out.mkdir()
    ctx = StageContext(run_dir=tmp_path / "run", show_progress=False,
                       logger=logging.getLogger("test"))
    report = deploy.run(params, {"gguf": gguf_dir, "export": export, "eval": eval_dir,
                                 "data": sft_data}, out, ctx)
    check = report["ollama"]["template_check"]
    assert check["family"] == "qwen2.5" and check["equivalent"] and check["tools"]
    assert f'TEMPLATE """{go_template("qwen2.5")}"""' in (out / "Modelfile").read_text()
    assert report["ollama"]["stop"] == ["<|im_end|>", "<|im_start|>"]
    integration = json.loads((out / "integration_config.json").read_text())
    assert integration["api"] == "chat.completions" and integration["base_url"] == f"{host}/v1"
    assert [t["function"]["name"] for t in integration["tools"]] == [
        t["function"]["name"] for t in TOOL_SCHEMAS]
    assert integration["tool_calls"]["syntax"] == "hermes"
    assert "tools=tools" in integration["snippets"]["openai_sdk"]
    assert "OpenAIChatCompletionsModel" in integration["snippets"]["openai_agents_sdk"]
