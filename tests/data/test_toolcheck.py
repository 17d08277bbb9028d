"""The tool-call lint: every dirty row rejected by line with its reason code and JSON path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmops.data import canonical
from llmops.data.prepare import chat_token_counter, count_rejects, lint
from llmops.data.readers import read_source
from llmops.data.toolcheck import check_batch, check_row

DATA = Path(__file__).parent
CALL = "messages[1].tool_calls[0].function"


@pytest.fixture(autouse=True)
def _quiet():
    import datasets

    datasets.disable_progress_bars()


def read_and_lint(name, tmp_path, **kwargs):
    rows, read_rejects = read_source(DATA / name, cache_dir=str(tmp_path / "cache"))
    clean, rejects = lint(rows, **kwargs)
    return clean, read_rejects, rejects


def test_dirty_fixture_is_rejected_line_by_line_with_code_and_path(tmp_path):
    clean, read_rejects, rejects = read_and_lint("dirty_tools.jsonl", tmp_path)
    assert [r["meta"]["line"] for r in clean] == [1]
    assert [(r["meta"]["line"], r["reject"]["code"]) for r in read_rejects] == [
        (12, "invalid_json")]
    assert [(r["meta"]["line"], r["reject"]["code"], r["reject"]["path"]) for r in rejects] == [
        (2, "unknown_tool", f"{CALL}.name"),
        (3, "arguments_not_json", f"{CALL}.arguments"),
        (4, "argument_type", "messages[3].tool_calls[0].function.arguments.due"),
        (5, "argument_missing", f"{CALL}.arguments.title"),
        (6, "orphan_tool_message", "messages[2].tool_call_id"),
        (7, "null_content", "messages[1].content"),
        (8, "argument_enum", f"{CALL}.arguments.priority"),
        (9, "argument_unknown", f"{CALL}.arguments.colour"),
        (10, "no_assistant_end", "messages[2].role"),
        (13, "bad_role_order", "messages[1].role"),
    ]
    assert count_rejects(rejects)["unknown_tool"] == 1 and len(count_rejects(rejects)) == 10


def test_dirty_fixture_messages_name_the_value_and_the_fix(tmp_path):
    _, _, rejects = read_and_lint("dirty_tools.jsonl", tmp_path)
    message = {r["meta"]["line"]: r["reject"]["message"] for r in rejects}
    assert message[2] == ("'craete_task' is not a tool the row declares (create_task, list_tasks, "
                          "complete_task). Did you mean 'create_task'? Fix the name or declare it.")
    assert message[3] == ("'{\"title\": \"buy milk\"' is not JSON (Expecting ',' delimiter at "
                          "column 21). Write the arguments as a JSON object.")
    assert message[4] == ("20250301 is not of type 'string', as tool 'create_task' requires. "
                          "Fix the value.")
    assert message[5] == ("required argument 'title' of tool 'create_task' is missing. Add it to "
                          "the call's arguments.")
    assert message[6] == ("'c9' answers no earlier call (unanswered call ids: c1). Point it at "
                          "its call's id.")
    assert message[8] == ("'urgent' is not one of 'low', 'medium', 'high' (tool 'create_task'). "
                          "Use one of them.")
    assert message[9] == ("tool 'create_task' takes no argument 'colour' (allowed: due, "
                          "priority, title). Remove it or add it to the schema.")


@pytest.mark.parametrize("name", ["openai_tools.jsonl", "sharegpt_tools.json", "alpaca.json",
                                  "completion.jsonl", "text.jsonl", "pairs.jsonl",
                                  "sharegpt_pairs.json"])
def test_clean_fixtures_pass_the_lint(tmp_path, name):
    clean, read_rejects, rejects = read_and_lint(name, tmp_path)
    assert len(read_rejects) == 0 and len(rejects) == 0 and len(clean) >= 2


def _row(*messages, tools=None):
    return {"messages": list(messages), "tools": tools}


M = canonical.message
CALLS = [{"id": None, "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]


def reject_of(row):
    with pytest.raises(canonical.Rejected) as info:
        check_row(row)
    return info.value.code, info.value.path


def test_tool_message_answers_a_call_by_name_when_it_has_no_id():
    check_row(_row(M("user", "x"), M("assistant", None, CALLS), M("tool", "ok", name="lookup"),
                   M("assistant", "done")))
    assert reject_of(_row(M("user", "x"), M("assistant", None, CALLS),
                          M("tool", "ok", name="other"), M("assistant", "done"))) == (
        "orphan_tool_message", "messages[2].name")


def test_invalid_tool_schema_names_the_tool():
    tools = json.dumps([{"type": "function", "function": {
        "name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": 5}}}}}])
    assert reject_of(_row(M("user", "x"), M("assistant", None, CALLS), tools=tools)) == (
        "tool_schema_invalid", "tools[0].function.parameters")


def test_calls_are_not_checked_against_tools_when_the_row_declares_none():
    check_row(_row(M("user", "x"), M("assistant", None, CALLS)))


def test_an_empty_assistant_answer_without_calls_is_rejected():
    assert reject_of(_row(M("user", "x"), M("assistant", "  "))) == (
        "empty_content", "messages[1].content")


def test_every_assistant_turn_at_weight_zero_leaves_nothing_to_learn():
    assert reject_of(_row(M("user", "x"), M("assistant", "y", weight=0.0))) == (
        "nothing_to_learn", "messages")


def test_preference_pair_with_equal_answers_is_rejected():
    answer = [M("assistant", "same")]
    with pytest.raises(canonical.Rejected, match="equals chosen"):
        check_row({"prompt": [M("user", "x")], "chosen": answer, "rejected": answer,
                   "tools": None})


def test_check_batch_keeps_an_earlier_reject():
    earlier = {"code": "invalid_json", "path": "$", "message": "x"}
    out = check_batch({"messages": [None], "tools": [None], "reject": [earlier]}, [0])
    assert out == {"reject": [earlier]}


def test_rows_over_max_length_in_model_tokens_are_reported_not_truncated(tmp_path):
    from llmops.backends.tiny import build_tokenizer

    rows, _ = read_source(DATA / "alpaca.json", cache_dir=str(tmp_path / "cache"))
    texts = [m["content"] for r in rows for m in r["messages"]]
    tokenizer = build_tokenizer(texts * 20, vocab_size=300, model_max_length=512)
    measure = chat_token_counter(tokenizer)
    lengths = list(measure([dict(r) for r in rows]))
    expected = [len(tokenizer.apply_chat_template(
        [{"role": m["role"], "content": m["content"]} for m in r["messages"]], tokenize=True,
        return_dict=True)["input_ids"]) for r in rows]
    assert lengths == expected
    limit = sorted(lengths)[1]
    clean, rejects = lint(rows, max_length=limit, measure=measure)
    longest = lengths.index(max(lengths))
    assert [r["meta"]["row"] for r in rejects] == [longest + 1]
    assert rejects[0]["reject"] == {
        "code": "too_long", "path": "$",
        "message": f"{max(lengths)} tokens > data.max_length={limit}. Raise data.max_length or "
                   "shorten the row; it is not truncated."}
    kept = [r for r in rows if r["meta"]["row"] != longest + 1]
    assert [r["messages"] for r in clean] == [r["messages"] for r in kept]
