"""The offline real-vocabulary fixtures are what they claim: the family's full tokenizer, its own
chat template (tools included), and a config.json that transformers loads as that architecture."""

from __future__ import annotations

import json

import pytest

TOOLS = [{"type": "function", "function": {
    "name": "create_task", "description": "Creates a task.",
    "parameters": {"type": "object", "properties": {"title": {"type": "string"}},
                   "required": ["title"]}}}]
CALL = [{"role": "user", "content": "Add a task: buy milk"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "function": {"name": "create_task",
                                              "arguments": {"title": "buy milk"}}}]}]


@pytest.mark.parametrize("family,arch,vocab,needle", [
    ("qwen2", "Qwen2ForCausalLM", 151_936, "<tool_call>\n{\"name\": \"create_task\""),
    ("llama", "LlamaForCausalLM", 128_256, "{\"name\": \"create_task\", \"parameters\""),
])
def test_real_model_folder(real_model, family, arch, vocab, needle):
    from transformers import AutoTokenizer

    folder = real_model(family)
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == [arch]
    assert config["vocab_size"] >= vocab
    tok = AutoTokenizer.from_pretrained(folder)
    assert len(tok) >= vocab
    text = tok.apply_chat_template(CALL, tools=TOOLS, tokenize=False)
    assert needle in text
    assert tok.eos_token in text
