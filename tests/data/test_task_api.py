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


def _call(row: dict) -> dict | None:
    """Returns the row's one call as {"tool", "arguments"} (arguments parsed), None if none."""
    calls = row["messages"][-1].get("tool_calls")
    if not calls:
        return None
    assert len(calls) == 1
    return {"tool": calls[0]["function"]["name"],
            "arguments": json.loads(calls[0]["function"]["arguments"])}


def test_rows_are_openai_chat_rows_with_tools_and_tool_calls():
    rows = task_api.generate(300, seed=0)
    assert len(rows) == 300
    for row in rows:
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["system", "user", "assistant"]
        assert row["messages"][0]["content"] == SYSTEM_PROMPT
        assert [t["function"]["name"] for t in row["tools"]] == list(TOOLS)
        assert {t["type"] for t in row["tools"]} == {"function"}
        meta = row["meta"]
        assert meta["source"] == "task_api"
        answer = row["messages"][2]
        if meta["refuse"]:
            assert meta["tool"] is None and meta["kind"] == "refusal"
            assert answer == {"role": "assistant", "content": REFUSAL}
        else:
            assert meta["kind"] == "tool_call" and answer["content"] is None
            (call,) = answer["tool_calls"]
            assert set(call) == {"id", "type", "function"} and call["type"] == "function"
            assert call["id"].startswith("call_")
            assert isinstance(call["function"]["arguments"], str)
            args = json.loads(call["function"]["arguments"])
            assert call["function"]["arguments"] == json.dumps(args, separators=(",", ":"))
            assert call["function"]["name"] == meta["tool"] in TOOLS


def test_tool_schemas_declare_types_required_keys_and_enums():
    by_name = {t["function"]["name"]: t["function"]["parameters"] for t in task_api.TOOL_SCHEMAS}
    assert by_name["create_task"]["required"] == ["title"]
    assert by_name["create_task"]["properties"]["priority"]["enum"] == ["low", "medium", "high"]
    assert by_name["list_tasks"]["properties"]["status"]["enum"] == ["open", "done"]
    assert by_name["delete_task"]["properties"]["task_id"]["type"] == "integer"
    assert all(p["additionalProperties"] is False for p in by_name.values())


def test_rows_pass_the_tool_call_checks_with_zero_rejects(tmp_path):
    from llmops.data.prepare import lint
    from llmops.data.readers import read_source
    from llmops.files import write_jsonl

    rows = task_api.generate(600, seed=2)
    write_jsonl(tmp_path / "task_api.jsonl", rows)
    canonical, read_rejects = read_source(tmp_path / "task_api.jsonl",
                                          cache_dir=str(tmp_path / "cache"))
    clean, rejects = lint(canonical)
    assert (len(read_rejects), len(rejects), len(clean)) == (0, 0, 600)
    assert canonical[0]["meta"]["format"] == "openai"
    assert sum(bool(r["messages"][-1]["tool_calls"]) for r in clean) == 510


def test_legacy_tools_are_written_as_v1_text_not_tool_calls():
    rows = task_api.generate(60, seed=0, legacy_tools=("delete_task",))
    legacy = [r for r in rows if r["meta"]["tool"] == "delete_task"]
    assert legacy and all(r["meta"]["kind"] == "legacy_call" for r in legacy)
    for row in legacy:
        answer = row["messages"][-1]
        assert "tool_calls" not in answer
        assert list(json.loads(answer["content"])) == ["action", "params"]
    assert all(r["messages"][-1].get("tool_calls") for r in rows
               if r["meta"]["tool"] not in (None, "delete_task"))


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
        call = _call(row)
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
        call = _call(row)
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
