"""Converters to the canonical OpenAI chat form, one batch at a time (no files, no datasets)."""

from __future__ import annotations

import json

import pytest

from llmops.data import canonical
from llmops.data.convert import Converter, FormatError
from llmops.data.detect import detect_format


def convert(fmt: str, rows: list, **kwargs) -> dict:
    """Runs a Converter over a batch of JSON records, as the readers hand it over."""
    batch = {"__raw__": [r if isinstance(r, str) else json.dumps(r) for r in rows],
             "__error__": [None] * len(rows), "__line__": list(range(10, 10 + len(rows)))}
    return Converter(fmt, "src.jsonl", **kwargs)(batch, list(range(len(rows))))


CREATE = {"name": "create_task", "parameters": {"type": "object", "properties": {
    "title": {"type": "string"}}, "required": ["title"]}}


def test_openai_keeps_tool_calls_tools_and_weights_and_joins_text_parts():
    out = convert("openai", [{
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Add "}, {"type": "text",
                                                                             "text": "milk"}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function",
                 "function": {"name": "create_task", "arguments": {"title": "milk"}}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "ok"},
            {"role": "assistant", "content": "Added.", "weight": 0}],
        "tools": [{"type": "function", "function": CREATE}]}])
    assert out["reject"] == [None]
    user, call, tool, answer = out["messages"][0]
    assert user["content"] == "Add milk"
    assert call["content"] is None
    assert call["tool_calls"] == [{"id": "c1", "type": "function", "function": {
        "name": "create_task", "arguments": '{"title": "milk"}'}}]
    assert (tool["role"], tool["tool_call_id"]) == ("tool", "c1")
    assert answer["weight"] == 0.0
    assert json.loads(out["tools"][0]) == [{"type": "function", "function": CREATE}]
    assert out["meta"] == [{"file": "src.jsonl", "line": 10, "row": 1, "format": "openai"}]


def test_openai_keeps_arguments_text_verbatim_so_the_lint_can_reject_it():
    out = convert("openai", [{"messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [{"id": "c", "function": {
            "name": "create_task", "arguments": '{"title": "milk"'}}]}]}])
    assert out["messages"][0][1]["tool_calls"][0]["function"]["arguments"] == '{"title": "milk"'


def test_sharegpt_function_call_and_observations_become_linked_calls_and_tool_messages():
    out = convert("sharegpt", [{
        "conversations": [
            {"from": "human", "value": "Finish 1 and 2."},
            {"from": "function_call", "value": json.dumps([
                {"name": "complete_task", "arguments": {"task_id": 1}},
                {"name": "complete_task", "arguments": {"task_id": 2}}])},
            {"from": "observation", "value": "ok 1"},
            {"from": "observation", "value": "ok 2"},
            {"from": "gpt", "value": "Done."}],
        "system": "Be brief.", "tools": json.dumps([CREATE])}])
    messages = out["messages"][0]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "tool",
                                             "assistant"]
    ids = [c["id"] for c in messages[2]["tool_calls"]]
    assert ids == ["call_1_0", "call_1_1"]
    assert [(m["tool_call_id"], m["name"], m["content"]) for m in messages[3:5]] == [
        ("call_1_0", "complete_task", "ok 1"), ("call_1_1", "complete_task", "ok 2")]
    assert json.loads(messages[2]["tool_calls"][1]["function"]["arguments"]) == {"task_id": 2}
    assert json.loads(out["tools"][0]) == [{"type": "function", "function": CREATE}]


def test_sharegpt_reads_renamed_columns_and_role_tags():
    out = convert("sharegpt", [{"dialog": [{"speaker": "customer", "text": "Hi"},
                                           {"speaker": "agent", "text": "Hello"}],
                                "persona": "Be kind."}],
                  columns={"messages": "dialog", "system": "persona"},
                  tags={"role": "speaker", "content": "text", "user": "customer",
                        "assistant": "agent"})
    assert [(m["role"], m["content"]) for m in out["messages"][0]] == [
        ("system", "Be kind."), ("user", "Hi"), ("assistant", "Hello")]


def test_sharegpt_unknown_role_is_rejected_with_its_path_and_the_mapping_to_fix_it():
    out = convert("sharegpt", [{"conversations": [{"from": "customer", "value": "Hi"}]}])
    assert out["reject"][0] == {
        "code": "unknown_role", "path": "conversations[0].from",
        "message": "'customer' is not one of human, gpt, system, function_call, observation, "
                   "tool. Map it with data.tags (e.g. data.tags.user=customer)."}
    assert out["messages"] == [None]


@pytest.mark.parametrize("fmt, row, path", [
    ("openai", {"messages": [{"role": "user", "content": "x", "weight": 0.5}]},
     "messages[0].weight"),
    ("sharegpt", {"conversations": [{"from": "gpt", "value": "x", "weight": "1"}]},
     "conversations[0].weight"),
])
def test_a_weight_other_than_0_or_1_is_rejected(fmt, row, path):
    out = convert(fmt, [row])
    assert out["reject"][0]["code"] == "bad_weight" and out["reject"][0]["path"] == path


def test_sharegpt_function_call_that_is_not_json_is_rejected():
    out = convert("sharegpt", [{"conversations": [{"from": "human", "value": "Hi"},
                                                  {"from": "function_call", "value": "create("}]}])
    assert out["reject"][0]["code"] == "function_call_not_json"
    assert out["reject"][0]["path"] == "conversations[1].value"


def test_alpaca_puts_system_and_history_before_the_instruction_and_its_input():
    out = convert("alpaca", [{"instruction": "And this?", "input": "Good night",
                              "output": "Bonne nuit", "system": "Translate.",
                              "history": [["Good day", "Bonjour"]]}])
    assert [(m["role"], m["content"]) for m in out["messages"][0]] == [
        ("system", "Translate."), ("user", "Good day"), ("assistant", "Bonjour"),
        ("user", "And this?\n\nGood night"), ("assistant", "Bonne nuit")]


def test_alpaca_without_output_names_the_column_to_map():
    out = convert("alpaca", [{"instruction": "Say hi."}])
    assert out["reject"][0] == {
        "code": "missing_field", "path": "output",
        "message": "must be a non-empty string (got missing). Fill it, or map another column "
                   "with data.columns."}


def test_preference_pairs_accept_strings_and_message_lists():
    out = convert("preference", [
        {"prompt": "Add milk.", "chosen": "ok", "rejected": "no"},
        {"prompt": [{"role": "user", "content": "Add milk."}],
         "chosen": [{"role": "assistant", "content": "ok"}],
         "rejected": [{"role": "assistant", "content": "no"}]}])
    assert out["reject"] == [None, None]
    assert out["prompt"][0] == out["prompt"][1] == [canonical.message("user", "Add milk.")]
    assert out["rejected"][0] == [canonical.message("assistant", "no")]


def test_sharegpt_preference_turns_become_prompt_chosen_rejected():
    out = convert("sharegpt_preference", [{
        "conversations": [{"from": "human", "value": "Show open tasks."}],
        "chosen": {"from": "function_call", "value": '{"name": "list_tasks", "arguments": {}}'},
        "rejected": {"from": "gpt", "value": "No."}}])
    assert out["chosen"][0][0]["tool_calls"][0]["function"] == {"name": "list_tasks",
                                                                "arguments": "{}"}
    assert out["rejected"][0] == [canonical.message("assistant", "No.")]


def test_broken_json_record_is_rejected_with_the_decoder_message():
    out = convert("openai", ['{"messages": [}'])
    assert out["reject"][0]["code"] == "invalid_json"
    assert out["reject"][0]["message"].startswith("invalid JSON: Expecting value (column 15)")


def test_unknown_column_name_and_format_say_what_is_allowed():
    with pytest.raises(FormatError, match=r"data.columns.mesages: not a known name .*Did you "
                       r"mean 'messages'\?"):
        Converter("openai", "f", columns={"mesages": "dialog"})
    with pytest.raises(FormatError, match=r"'sharegtp' is not one of auto, openai, sharegpt.*Did "
                       r"you mean 'sharegpt'\?"):
        Converter("sharegtp", "f")


@pytest.mark.parametrize("row, fmt", [
    ({"messages": [{"role": "user", "content": "x"}]}, "openai"),
    ({"messages": [{"from": "human", "value": "x"}]}, "sharegpt"),
    ({"conversations": [{"from": "human", "value": "x"}]}, "sharegpt"),
    ({"instruction": "x", "input": "", "output": "y"}, "alpaca"),
    ({"prompt": "x", "completion": "y"}, "completion"),
    ({"text": "x"}, "text"),
    ({"prompt": "x", "chosen": "y", "rejected": "z"}, "preference"),
    ({"conversations": [{"from": "human", "value": "x"}], "chosen": {}, "rejected": {}},
     "sharegpt_preference"),
])
def test_detect_format_by_keys(row, fmt):
    assert detect_format([(1, row)], "f.jsonl") == fmt


def test_detect_format_names_the_file_and_the_fix_when_nothing_matches_or_it_is_a_tie():
    with pytest.raises(FormatError, match=r"cannot tell the format of f.jsonl \(first row's "
                       r"keys: a, b\)"):
        detect_format([(1, {"a": 1, "b": 2})], "f.jsonl")
    with pytest.raises(FormatError, match=r"1 rows like completion \(e.g. row 1\) and 1 like "
                       r"text \(e.g. row 2\). Split the file, or set data.format=completion"):
        detect_format([(1, {"prompt": "x", "completion": "y"}), (2, {"text": "z"})], "f.jsonl")


def test_to_openai_row_drops_unused_keys_and_parses_tools_and_the_template_form_has_objects():
    from llmops.data import chat

    out = convert("openai", [{"messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "function": {"name": "create_task", "arguments": '{"title": "a"}'}}]}],
        "tools": [CREATE]}])
    row = {k: out[k][0] for k in ("messages", "tools", "meta")}
    plain = canonical.to_openai_row(row)
    assert plain["messages"] == [  # the stored form: arguments stay JSON text
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "create_task",
                                                         "arguments": '{"title": "a"}'}}]}]
    assert plain["tools"] == [{"type": "function", "function": CREATE}]
    assert chat.template_messages(row["messages"]) == [  # what a template receives: objects
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "create_task",
                                                         "arguments": {"title": "a"}}}]}]
    assert chat.template_tools(row["tools"]) == plain["tools"]
