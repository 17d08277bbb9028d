"""The tiny base model: builds offline, loads with Auto classes, masks assistant tokens."""

from __future__ import annotations

import json
import logging

import pytest

from llmops.data import task_api


def test_base_folder_loads_with_auto_classes(tiny_base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name in (
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "base_report.json",
    ):
        assert (tiny_base / name).is_file(), name
    tok = AutoTokenizer.from_pretrained(tiny_base)
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    assert model.config.model_type == "llama"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|pad|>"
    assert model.config.eos_token_id == tok.eos_token_id
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.config.vocab_size == len(tok) <= 512
    report = json.loads((tiny_base / "base_report.json").read_text())
    assert report["parameters"] == sum(p.numel() for p in model.parameters())
    assert report["steps"] == 30 and len(report["loss_curve"]) >= 2
    assert report["loss_curve"][-1]["loss"] < report["loss_curve"][0]["loss"]
    assert report["tokenizer"]["gguf_pre_tokenizer"] == "gpt-2"


def test_chat_template_marks_exactly_the_assistant_turn(tiny_base):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    assert "{% generation %}" in tok.chat_template or "{%- generation -%}" in tok.chat_template
    row = next(r for r in task_api.generate(8, seed=5) if r["meta"]["kind"] == "tool_call")
    fn = row["messages"][-1]["tool_calls"][0]["function"]
    enc = tok.apply_chat_template(
        row["messages"], tools=row["tools"], tokenize=True, return_dict=True,
        return_assistant_tokens_mask=True,
    )
    ids = [i for i, m in zip(enc["input_ids"], enc["assistant_masks"], strict=False) if m]
    call = '{"tool":"' + fn["name"] + '","arguments":' + fn["arguments"] + "}"
    assert tok.decode(ids) == call + "<|im_end|>"
    prompt = tok.apply_chat_template(
        row["messages"][:-1], tools=row["tools"], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    assert prompt.startswith(
        "<|im_start|>system\n" + task_api.SYSTEM_PROMPT + "\nTools: create_task list_tasks "
        "update_task complete_task delete_task<|im_end|>\n"
    )


def test_chat_template_without_tools_is_plain_chatml(tiny_base):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                {"role": "assistant", "content": "A"}]
    assert tok.apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"
        "<|im_start|>assistant\nA<|im_end|>\n"
    )
    assert tok.apply_chat_template(messages[1:2], tools=task_api.TOOL_SCHEMAS[3:4],
                                   tokenize=False) == (
        "<|im_start|>system\nTools: complete_task<|im_end|>\n"
        "<|im_start|>user\nU<|im_end|>\n"
    )


def test_base_is_pretrained_through_the_template_on_calls_and_legacy_text(tiny_base):
    report = json.loads((tiny_base / "base_report.json").read_text())
    assert report["tokenizer"]["tool_syntax"] == "task_api"
    # every pre-training row carries the tools line besides its chat (~74 tokens without)
    assert report["seq_len"]["mean"] > 80


def test_tokenizer_splits_numbers_into_digits_and_round_trips(tiny_base):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    text = 'Delete task 430. {"tool":"delete_task","arguments":{"task_id":430}}'
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    pieces = tok.convert_ids_to_tokens(tok(" 430", add_special_tokens=False)["input_ids"])
    assert [p.lstrip("Ġ") for p in pieces if p.lstrip("Ġ")] == ["4", "3", "0"]


def test_build_is_deterministic_for_a_seed(tmp_path, stage_params):
    from safetensors.torch import load_file

    from llmops.backends.tiny import build_tiny_base

    quick = stage_params("base", "model.pretrain.n_examples=48", "model.pretrain.steps=3",
                         "model.pretrain.batch_size=4")
    build_tiny_base(tmp_path / "a", quick["arch"], quick["pretrain"], show_progress=False)
    build_tiny_base(tmp_path / "b", quick["arch"], quick["pretrain"], show_progress=False)
    a = load_file(tmp_path / "a" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a)
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (
        tmp_path / "b" / "tokenizer.json"
    ).read_text()


def test_unknown_pretrain_tool_is_a_stage_error(tmp_path, stage_params):
    from llmops.core.context import StageContext
    from llmops.errors import StageError
    from llmops.stages import tiny_base as base_stage

    params = stage_params("base")
    params["pretrain"]["tools"] = ["create_task", "send_mail"]
    ctx = StageContext(run_dir=tmp_path, show_progress=False, logger=logging.getLogger("t"))
    with pytest.raises(
        StageError, match=r"base.pretrain.tools has unknown tool\(s\) \['send_mail'\]"
    ):
        base_stage.run(params, {}, tmp_path, ctx)
