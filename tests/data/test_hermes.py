"""Hermes-style rows (``llmops.data.hermes``): tools, calls and responses lifted out of the text;
lifted text is untrusted, so each way it can be broken is one reject with its code."""

from __future__ import annotations

import json

import pytest

from tests.data.test_convert import convert

TOOLS = [{"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}}]


def row(call_text: str, tools_text: str | None = None, response: str | None = None) -> dict:
    system = f"Use the tools.\n<tools>\n{tools_text or json.dumps(TOOLS)}\n</tools>"
    turns = [{"from": "system", "value": system}, {"from": "human", "value": "Time in Oslo?"},
             {"from": "gpt", "value": call_text}]
    if response is not None:
        turns += [{"from": "tool", "value": response}, {"from": "gpt", "value": "It is noon."}]
    return {"conversations": turns}


def test_json_and_python_literal_calls_and_one_schema_per_line_tools_are_lifted():
    date = {"name": "get_date", "parameters": {"type": "object", "properties": {}}}
    lines = "\n".join(json.dumps(f) for f in (TOOLS[0]["function"], date, date))
    out = convert("hermes", [
        row("<tool_call>\n{'arguments': {'zone': 'CET'}, 'name': 'get_time'}\n</tool_call>",
            response="<tool_response>\n{\"name\": \"get_time\", \"content\": \"12:00\"}\n"
                     "</tool_response>"),
        row('Checking.<tool_call>{"name": "get_time", "arguments": {"zone": "UTC"}}</tool_call>',
            tools_text=lines)])
    assert out["reject"] == [None, None]
    first, second = out["messages"]
    assert first[2]["tool_calls"][0]["function"] == {"name": "get_time",
                                                    "arguments": '{"zone": "CET"}'}
    assert first[3]["role"] == "tool" and first[3]["tool_call_id"] == "call_2_0"
    assert first[3]["content"] == '{"name": "get_time", "content": "12:00"}'
    assert second[2]["content"] == "Checking."
    assert [t["function"]["name"] for t in json.loads(out["tools"][1])] == ["get_time",
                                                                             "get_date"]
    assert first[0]["content"] == "Use the tools."


@pytest.mark.parametrize("call_text,code", [
    ("<tool_call>{'name': 'get_time', 'arguments': {1, 2}}</tool_call>",
     "tool_call_not_parsed"),
    ("<tool_call>get_time(zone='CET')</tool_call>", "tool_call_not_parsed"),
    ("<tool_call>" + "[" * 500 + "]" * 500 + "</tool_call>", "too_deep"),
    ("<tool_call>" + "(" * 5000 + ")" * 5000 + "</tool_call>", "tool_call_not_parsed"),
    ("<tool_call>{'name': 'get_time', 'arguments': {'zone': '" + "x" * (1 << 20) + "'}}"
     "</tool_call>", "tool_call_not_parsed"),
    ("<tool_call>{'arguments': {}}</tool_call>", "bad_tool_call"),
    ("<tool_call>{'name': '', 'arguments': {}}</tool_call>", "tool_call_name"),
    ("<tool_call>{'name': 'get_time', 'arguments': {}}", "unclosed_tag"),
    ("<tool_call>{'name': 'get_time', 'arguments': {'zone': 5}}</tool_call>", None),
])
def test_broken_lifted_calls_are_one_reject_each(call_text, code):
    out = convert("hermes", [row(call_text)])
    assert (out["reject"][0] or {}).get("code") == code


def test_tools_that_do_not_parse_are_a_reject():
    out = convert("hermes", [row("<tool_call>{'name': 'get_time'}</tool_call>",
                                 tools_text="[{'name': 'get_time', oops]")])
    assert out["reject"][0]["code"] == "hermes_tools"


def test_auto_detects_hermes_even_when_most_rows_have_no_markup():
    from llmops.data.detect import detect_format

    plain = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hi"}]}
    rows = [(i, plain) for i in range(1, 9)] + [(9, row("<tool_call>{}</tool_call>"))]
    assert detect_format(rows, "f.json") == "hermes"
    openai = {"messages": [{"role": "assistant", "content": "<tool_call>{}</tool_call>"}]}
    assert detect_format([(1, openai)], "f.json") == "hermes"
