"""The fine-tuning API's rules for a chat training file (llmops.data.openai_ft): each rule names
its row and what is wrong; a good Task-API row breaks none."""

from __future__ import annotations

import copy

import pytest

from llmops.data import task_api
from llmops.data.openai_ft import check_split, problem_line, row_problems, upload_row
from llmops.planning.openai_ft import example_tokens

ROW = task_api.generate(1, seed=2)[0]


def _count(row):
    return example_tokens(row, "gpt-4o-mini-2024-07-18")


def _broken(path: str, value):
    row = copy.deepcopy(ROW)
    *keys, last = path.split(".")
    node = row
    for k in keys:
        node = node[int(k)] if k.isdigit() else node[k]
    node[int(last) if last.isdigit() else last] = value
    return row


def test_a_generated_row_breaks_no_rule_and_uploads_without_llmops_fields():
    assert row_problems(ROW, 65536, _count) == []
    assert set(upload_row({**ROW, "meta": {}, "label": True})) == {"messages", "tools"}


@pytest.mark.parametrize(("path", "value", "rule", "text"), [
    ("messages.1.role", "developer", "role", "'developer' is not one of"),
    ("messages.0.weight", 1, "weight", "assistant messages only (a system message"),
    ("messages.2.weight", 2, "weight", "must be 0 or 1 (got 2)"),
    ("messages.2.weight", 0, "assistant", "no assistant message to train on"),
    ("messages.2.reasoning_content", "hm", "message_keys", "data.reasoning=drop"),
    ("messages.1.content", None, "content", "content must be a string"),
    ("messages.2.tool_calls", [{"id": "c", "type": "function",
                                "function": {"name": "x", "arguments": {"a": 1}}}],
     "tool_calls", "JSON text (a string)"),
    ("messages.2.tool_calls", [{"id": "c", "type": "fn", "function": {"name": "x"}}],
     "tool_calls", "type must be 'function'"),
    ("tools", {"a": 1}, "tools", "tools must be a list"),
])
def test_each_rule_names_what_is_wrong(path, value, rule, text):
    problems = row_problems(_broken(path, value), 65536, _count)
    assert [r for r, _ in problems] == [rule], problems
    assert text in problems[0][1]


def test_a_tool_message_must_answer_an_earlier_call_and_examples_fit_the_context():
    row = copy.deepcopy(ROW)
    row["messages"].insert(2, {"role": "tool", "tool_call_id": "nope", "content": "{}"})
    assert [r for r, _ in row_problems(row, 65536, _count)] == ["tool_call_id"]
    (rule, msg), = row_problems(ROW, 10, _count)
    assert rule == "tokens" and "above the 10 an example may hold" in msg


def test_check_split_gives_file_line_row_and_source():
    rows = [ROW, {**_broken("messages.0.weight", 1), "meta": {"file": "a.jsonl", "line": 7}}]
    (p,) = check_split(rows, "train.jsonl", 65536, _count)
    assert (p["line"], p["row"], p["rule"]) == (2, 1, "weight")
    assert problem_line(p).startswith("train.jsonl line 2 (row 1) (from a.jsonl:7): rule 'weight'")
