"""The Task-API demo as real tool calls: the tiny template renders tools and tool_calls, its parser
reads them back, prompts carry the tools, and the structural scorer grades the answers."""

from __future__ import annotations

import json
import random

import pytest

from llmops.data import preferences, task_api
from llmops.scoring.parsers import ParsedAnswer, parse_hermes, parse_task_api, parser_for


@pytest.fixture(scope="module")
def tok(tiny_base):
    from llmops.backends.generation import load_tokenizer

    return load_tokenizer(tiny_base)


def _expected(message: dict) -> list[dict]:
    return [{"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}
            for c in message.get("tool_calls") or []]


def test_every_test_row_renders_and_parses_back_to_the_same_calls(tok, tmp_path, stage_params):
    from llmops.backends.generation import render_answer
    from llmops.core.context import StageContext
    from llmops.files import read_jsonl
    from llmops.stages import data as data_stage

    params = stage_params("data", "data.n_examples=400", "data.seed=3", "data.val_fraction=0.1",
                          "data.test_fraction=0.25")
    ctx = StageContext(run_dir=tmp_path, show_progress=False)
    (tmp_path / "data").mkdir()
    data_stage.run(params, {}, tmp_path / "data", ctx)
    rows = read_jsonl(tmp_path / "data" / "test.jsonl")
    assert sum(bool(r["messages"][-1].get("tool_calls")) for r in rows) == 85
    parse = parser_for(tok.chat_template)
    assert parse is parse_task_api
    for row in rows:
        answer = render_answer(tok, row["messages"], row["tools"])
        parsed = parse(answer)
        assert parsed.calls == _expected(row["messages"][-1]), answer
        assert parsed.errors == []
        assert parsed.text == (row["messages"][-1]["content"] or "")


def test_text_and_several_calls_round_trip_with_arguments_as_objects_or_text(tok):
    from llmops.backends.generation import render_answer

    answer = {"role": "assistant", "content": "Two calls.", "tool_calls": [
        {"id": "a", "type": "function",
         "function": {"name": "delete_task", "arguments": {"task_id": 3}}},
        {"id": "b", "type": "function",
         "function": {"name": "list_tasks", "arguments": '{"status":"open"}'}}]}
    messages = [{"role": "user", "content": "Delete task 3 and list open tasks."}, answer]
    text = render_answer(tok, messages, task_api.TOOL_SCHEMAS)
    assert text == ('Two calls.\n{"tool":"delete_task","arguments":{"task_id":3}}\n'
                    '{"tool":"list_tasks","arguments":{"status":"open"}}')
    assert parse_task_api(text) == ParsedAnswer(
        [{"name": "delete_task", "arguments": {"task_id": 3}},
         {"name": "list_tasks", "arguments": {"status": "open"}}], "Two calls.")


def test_prompts_carry_the_tools_and_tool_turns(tok):
    from llmops.backends.generation import build_prompt

    row = task_api.generate(1, seed=1)[0]
    with_tools = build_prompt(tok, row["messages"], json.dumps(row["tools"]))
    assert "\nTools: create_task list_tasks update_task complete_task delete_task<" in with_tools
    assert with_tools.endswith("<|im_start|>assistant\n")
    assert "Tools:" not in build_prompt(tok, row["messages"])
    chat = [*row["messages"][:2],
            {"role": "assistant", "content": None, "tool_calls": [
                task_api.tool_call("list_tasks", {}, "c1")]},
            {"role": "tool", "tool_call_id": "c1", "content": "[]"},
            {"role": "assistant", "content": "You have no tasks."}]
    prompt = build_prompt(tok, chat, row["tools"])
    assert prompt.endswith('{"tool":"list_tasks","arguments":{}}<|im_end|>\n'
                           "<|im_start|>tool\n[]<|im_end|>\n<|im_start|>assistant\n")


def test_weight_zero_turns_are_not_trained_on(tok):
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": "old", "weight": 0},
                {"role": "user", "content": "again"},
                {"role": "assistant", "content": "new"}]
    enc = tok.apply_chat_template(messages, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    kept = [i for i, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True) if m]
    assert tok.decode(kept) == "new<|im_end|>"


def test_parser_is_chosen_from_the_template():
    assert parser_for("{#- llmops tool syntax: task_api -#}...") is parse_task_api
    assert parser_for("{{ '<tool_call>' }}") is parse_hermes
    assert parser_for("{{ messages }}")("  plain  ") == ParsedAnswer([], "plain", [])
    with pytest.raises(ValueError, match="'nope' is not one of task_api, hermes"):
        parser_for("llmops tool syntax: nope")


def test_legacy_and_cut_off_calls_are_syntax_errors_not_calls():
    legacy = parse_task_api(task_api.format_call("delete_task", {"task_id": 4}, "v1"))
    assert legacy.calls == [] and legacy.errors
    cut = parse_task_api('{"tool":"delete_task","arguments":{"task_id":4}')
    assert cut.calls == [] and cut.errors


def test_kinds_come_from_the_row_and_schema_validity_is_scored():
    from llmops.scoring.tools import row_kind, score_tool_rows

    rows = task_api.generate(40, seed=9)
    call_row = next(r for r in rows if r["meta"]["kind"] == "tool_call")
    refusal = next(r for r in rows if r["meta"]["kind"] == "refusal")
    bare_refusal = {**refusal, "meta": {}}
    text = {"messages": [{"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello."}]}
    assert [row_kind(r) for r in (call_row, refusal, bare_refusal, text)] == [
        "tool", "refusal", "refusal", "text"]
    tool = call_row["messages"][-1]["tool_calls"][0]["function"]["name"]
    wrong_type = '{"tool":"' + tool + '","arguments":{"task_id":"seven","title":"x"}}'
    metrics, per_row = score_tool_rows([call_row, refusal, text],
                                       [wrong_type, task_api.REFUSAL, "Hello."], parse_task_api)
    assert per_row[0]["json_valid"] is True and per_row[0]["schema_valid"] is False
    assert per_row[0]["tool_hits"] == 1 and per_row[0]["exact"] is False
    assert per_row[1]["exact"] is True and per_row[2] is None
    assert metrics["counts"] == {"total": 2, "call": 1, "no_call": 1, "text": 1}


def test_dpo_negatives_are_wrong_tool_calls_the_checks_can_tell_apart():
    from llmops.data.canonical import Rejected, tool_call
    from llmops.data.toolcheck import check_call

    rows = [r for r in task_api.generate(60, seed=2) if r["meta"]["kind"] == "tool_call"]
    tools = json.dumps(task_api.TOOL_SCHEMAS)
    rng = random.Random(0)
    for row in rows[:20]:
        chosen = row["messages"][-1]
        for kind in ("wrong_tool", "wrong_argument", "malformed_json"):
            rejected = preferences.rejected_for(row, rng, kind)
            assert rejected["content"] is None and rejected != chosen
            call = tool_call(rejected["tool_calls"][0], "rejected")
            if kind == "malformed_json":
                with pytest.raises(Rejected) as err:
                    check_call(call, "rejected", tools)
                assert err.value.code == "arguments_not_json"
        assert "tool_calls" not in preferences.rejected_for(row, rng, "legacy_v1")
        assert preferences.rejected_for(row, rng, "false_refusal")["content"] == task_api.REFUSAL
    pairs, kinds = preferences.derive(task_api.generate(80, seed=4), seed=1)
    assert set(kinds) == {*preferences.CALL_KINDS, "complied"}
    assert all(p["tools"] == task_api.TOOL_SCHEMAS for p in pairs)
    complied = [p for p in pairs if p["meta"]["kind"] == "complied"]
    assert complied and all(p["rejected"][0]["tool_calls"] for p in complied)
