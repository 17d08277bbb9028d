"""Eval reads the answer after the reasoning (issue 22): a generated ``<think>`` block (or
gpt-oss's analysis channel) is separated from the answer, and only the answer is scored."""

from __future__ import annotations

import pytest

from llmops.scoring.parsers import parse_hermes, split_reasoning
from llmops.scoring.split import score_split


@pytest.mark.parametrize(("text", "reasoning", "answer"), [
    ("<think>\nCount: five.\n</think>\n\nIt is 5.", "Count: five.", "It is 5."),
    ("  <think></think>It is 5.", "", "It is 5."),  # an empty block is still a block
    ("Count: five.\n</think>\n\nIt is 5.", "Count: five.", "It is 5."),  # R1: prompt opened it
    ("<think>\nCount: fi", "Count: fi", ""),  # stopped inside: no answer at all
    ("<|channel|>analysis<|message|>Count.<|end|><|start|>assistant<|channel|>final"
     "<|message|>It is 5.", "Count.", "It is 5."),
    ("It is 5.", None, "It is 5."),
    ("I like <think> tags.", None, "I like <think> tags."),
])
def test_split_reasoning_separates_the_reasoning_from_the_answer(text, reasoning, answer):
    assert split_reasoning(text) == (reasoning, answer)


def test_the_answer_after_the_reasoning_is_scored_never_the_reasoning():
    text_row = {"messages": [{"role": "user", "content": "What is 2+3?"},
                             {"role": "assistant", "content": "It is 5."}]}
    call = {"name": "create_task", "arguments": '{"title": "buy milk"}'}
    tool_row = {"tools": [{"type": "function", "function": {"name": "create_task", "parameters": {
        "type": "object", "properties": {"title": {"type": "string"}}}}}],
        "messages": [{"role": "user", "content": "Add buy milk"}, {
            "role": "assistant", "content": None,
            "tool_calls": [{"id": "c", "type": "function", "function": call}]}]}
    rows = [text_row, tool_row, text_row]
    answers = ["<think>\nIt is 5. Or 6? It is 5.\n</think>\n\nIt is 5.",
               '<think>The user wants a task. <tool_call>{"name": "delete_task", '
               '"arguments": {}}</tool_call> no.</think>\n<tool_call>\n{"name": "create_task", '
               '"arguments": {"title": "buy milk"}}\n</tool_call>',
               "<think>\nIt is 5."]  # stopped inside its reasoning: no answer
    scored = score_split(rows, answers, parse_hermes)
    assert [r["exact"] for r in scored["per_row"]] == [True, True, False]
    assert scored["metrics"]["exact_match"] == pytest.approx(2 / 3)
    assert scored["reasoning"] == {"rows": 3, "chars": len("It is 5. Or 6? It is 5.") + len(
        'The user wants a task. <tool_call>{"name": "delete_task", "arguments": {}}</tool_call>'
        " no.") + len("It is 5.")}
    plain = score_split(rows[:1], ["It is 5."], parse_hermes)
    assert plain["reasoning"] == {"rows": 0, "chars": 0} and plain["per_row"][0]["exact"]
