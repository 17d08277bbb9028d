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


#: Each family's added tokens, one token each as in the real tokenizers (the vocab-only GGUF
#: files hold placeholders at those ids), and whether decoding without special tokens keeps them.
ADDED = {
    "qwen2": {"<tool_call>": (151657, True), "</tool_call>": (151658, True),
              "<|im_end|>": (151645, False)},
    "qwen3": {"<tool_call>": (151657, True), "</tool_call>": (151658, True),
              "<tool_response>": (151665, True), "</tool_response>": (151666, True),
              "<think>": (151667, True), "</think>": (151668, True)},
    "llama": {"<|python_tag|>": (128010, False), "<|eom_id|>": (128008, False),
              "<|finetune_right_pad_id|>": (128004, False), "<|eot_id|>": (128009, False)},
}


@pytest.mark.parametrize("family,arch,vocab,needle", [
    ("qwen2", "Qwen2ForCausalLM", 151_936, "<tool_call>\n{\"name\": \"create_task\""),
    ("qwen3", "Qwen3ForCausalLM", 151_936, "<tool_call>\n{\"name\": \"create_task\""),
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
    for token, (ident, kept) in ADDED[family].items():
        assert tok(token, add_special_tokens=False)["input_ids"] == [ident], token
        assert (tok.decode([ident], skip_special_tokens=True) == token) is kept, token
    if family == "qwen3":
        assert config["head_dim"] == 16
    if family == "llama":
        assert tok.pad_token == "<|finetune_right_pad_id|>"
