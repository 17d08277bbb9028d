"""Tests for the Task-API generator and its answer parsing."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from llmops.data import task_api
from llmops.data.task_api import REFUSAL, SYSTEM_PROMPT, TOOLS


def test_same_seed_same_rows_other_seed_other_rows():
    assert task_api.generate(200, seed=7) == task_api.generate(200, seed=7)
    assert task_api.generate(200, seed=7) != task_api.generate(200, seed=8)


def test_does_not_touch_global_random_state():
    random.seed(1)
    expected = random.random()
    random.seed(1)
    task_api.generate(50, seed=3)
    assert random.random() == expected


def test_rows_have_chat_shape_and_meta():
    rows = task_api.generate(300, seed=0)
    assert len(rows) == 300
    for row in rows:
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["system", "user", "assistant"]
        assert row["messages"][0]["content"] == SYSTEM_PROMPT
        meta = row["meta"]
        assert meta["source"] == "task_api"
        answer = row["messages"][2]["content"]
        if meta["refuse"]:
            assert meta["tool"] is None and answer == REFUSAL
        else:
            assert meta["tool"] in TOOLS
            assert answer == json.dumps(json.loads(answer), separators=(",", ":"))
            assert list(json.loads(answer)) == ["tool", "arguments"]
            assert json.loads(answer)["tool"] == meta["tool"]


def test_every_tool_and_refusals_appear_in_given_shares():
    rows = task_api.generate(1000, seed=1)
    counts = Counter(r["meta"]["tool"] for r in rows)
    assert counts[None] == 150
    assert {counts[t] for t in TOOLS} == {170}


def test_user_requests_are_unique_short_and_carry_argument_values():
    rows = task_api.generate(1200, seed=0)
    users = [r["messages"][1]["content"] for r in rows]
    assert len(set(users)) == len(users)
    assert max(len(u.split()) for u in users) <= 25
    for row in rows:
        call = task_api.parse_call(row["messages"][2]["content"])
        for value in (call or {}).get("arguments", {}).values():
            assert str(value) in row["messages"][1]["content"]


def test_subset_of_tools_and_no_refusals():
    rows = task_api.generate(
        100, seed=0, tools=["create_task", "list_tasks"], include_refusals=False
    )
    assert {r["meta"]["tool"] for r in rows} == {"create_task", "list_tasks"}


def test_tool_arguments_match_the_schema():
    allowed = {
        "create_task": ({"title"}, {"due", "priority"}),
        "list_tasks": (set(), {"status", "priority"}),
        "update_task": ({"task_id"}, {"title", "due", "priority"}),
        "complete_task": ({"task_id"}, set()),
        "delete_task": ({"task_id"}, set()),
    }
    for row in task_api.generate(500, seed=4, include_refusals=False):
        call = task_api.parse_call(row["messages"][2]["content"])
        required, optional = allowed[call["tool"]]
        keys = set(call["arguments"])
        assert required <= keys <= required | optional
        if call["tool"] == "update_task":
            assert len(keys) == 2
        if "task_id" in keys:
            assert isinstance(call["arguments"]["task_id"], int)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n": -1}, "n: must be ≥ 0"),
        ({"n": 5, "tools": ["send_email"]}, "tools: ['send_email'] not in"),
        ({"n": 5, "refusal_fraction": 1.5}, "refusal_fraction: must be in [0, 1]"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(kwargs, message):
    with pytest.raises(ValueError) as info:
        task_api.generate(seed=0, **kwargs)
    assert message in str(info.value)


def test_parse_call():
    assert task_api.parse_call(' {"tool":"list_tasks","arguments":{}}\n') == {
        "tool": "list_tasks",
        "arguments": {},
    }
    assert task_api.parse_call(REFUSAL) is None
    assert task_api.parse_call('{"tool": 3}') is None
    assert task_api.parse_call('["tool"]') is None
    assert task_api.parse_call('{"tool":"list_tasks"} trailing') is None
    assert task_api.parse_call("") is None


def test_is_refusal():
    assert task_api.is_refusal(REFUSAL)
    assert task_api.is_refusal(
        "  i can't help with THAT. I can only create, list, update, complete or delete tasks. "
    )
    assert task_api.is_refusal("Sorry, no.")
    assert not task_api.is_refusal('{"tool":"delete_task","arguments":{"task_id":1}}')
    assert not task_api.is_refusal("Sure, done.")


def test_calls_equal():
    ref = '{"tool":"create_task","arguments":{"title":"buy milk","priority":"high"}}'
    same = '{"arguments": {"priority": "high", "title": "buy milk"}, "tool": "create_task"}'
    assert task_api.calls_equal(same, ref)
    assert not task_api.calls_equal(ref.replace("high", "low"), ref)
    assert not task_api.calls_equal("not json", ref)
    assert task_api.calls_equal(f" {REFUSAL}\n", REFUSAL)
    assert not task_api.calls_equal(ref, REFUSAL)
