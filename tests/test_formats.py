"""Tests for reading, checking and normalising user JSONL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmops.data import formats
from llmops.data.formats import FormatError, Reject

SAMPLE = Path(formats.__file__).parent / "samples" / "tasks_chat.jsonl"

CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
INSTRUCT = {"instruction": "Translate", "input": "chat", "output": "cat"}
COMPLETION = {"prompt": "2+2=", "completion": "4"}


def write(tmp_path: Path, lines: list) -> Path:
    path = tmp_path / "data.jsonl"
    text = [line if isinstance(line, str) else json.dumps(line) for line in lines]
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "row, fmt", [(CHAT, "chat"), (INSTRUCT, "instruct"), (COMPLETION, "completion")]
)
def test_each_format_is_detected_and_normalised_to_chat(tmp_path, row, fmt):
    result = formats.read_jsonl(write(tmp_path, [row, row]), system_prompt="Be brief.")
    assert result.format == fmt
    assert result.n_read == 2 and not result.rejects
    messages = result.rows[0]["messages"]
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert [m["role"] for m in messages[1:]] == ["user", "assistant"]
    assert result.rows[1]["meta"] == {"source": "jsonl", "line": 2}


def test_instruct_joins_instruction_and_input_and_skips_empty_input(tmp_path):
    rows = [INSTRUCT, {"instruction": "Say hi", "input": "", "output": "hi"}]
    result = formats.read_jsonl(write(tmp_path, rows))
    assert result.rows[0]["messages"][0]["content"] == "Translate\n\nchat"
    assert result.rows[0]["messages"][1]["content"] == "cat"
    assert result.rows[1]["messages"][0]["content"] == "Say hi"


def test_chat_keeps_its_own_system_message_and_meta(tmp_path):
    row = {
        "messages": [{"role": "system", "content": "own"}] + CHAT["messages"],
        "meta": {"id": 9},
    }
    result = formats.read_jsonl(write(tmp_path, [row]), system_prompt="other")
    assert result.rows[0]["messages"][0]["content"] == "own"
    assert result.rows[0]["meta"] == {"id": 9, "source": "jsonl", "line": 1}


def test_rejects_carry_line_numbers_and_reasons(tmp_path):
    lines = [
        CHAT,  # 1
        '{"messages": [',  # 2
        "",  # 3 blank: skipped, not counted
        {"messages": "hi"},  # 4
        {"messages": [{"role": "bot", "content": "x"}, CHAT["messages"][1]]},  # 5
        {"messages": [{"role": "user", "content": "  "}, CHAT["messages"][1]]},  # 6
        {"messages": CHAT["messages"][:1]},  # 7
        {"messages": [{"role": "user", "content": 3}, CHAT["messages"][1]]},  # 8
        {"messages": [{"role": "user"}, CHAT["messages"][1]]},  # 9
        [1, 2],  # 10
        INSTRUCT,  # 11
        {"messages": []},  # 12
        {
            "messages": [
                CHAT["messages"][0],
                {"role": "system", "content": "s"},
                CHAT["messages"][1],
            ]
        },
    ]
    result = formats.read_jsonl(write(tmp_path, lines))
    assert result.format == "chat"
    assert result.n_read == 12
    assert len(result.rows) == 1
    assert result.rejects == [
        Reject(2, "invalid JSON: Expecting value (column 15)"),
        Reject(4, "'messages' must be a list (got str)"),
        Reject(5, "messages[0].role 'bot' is not one of system, user, assistant"),
        Reject(6, "messages[0].content is empty"),
        Reject(7, "last message must be the assistant's (got 'user')"),
        Reject(8, "messages[0].content must be a string (got int)"),
        Reject(9, "messages[0] is missing key 'content'"),
        Reject(10, "expected a JSON object (got list)"),
        Reject(
            11, "row is instruct format (keys: input, instruction, output) but the data is chat"
        ),
        Reject(12, "'messages' is empty"),
        Reject(13, "messages[1]: a system message may only come first"),
    ]


@pytest.mark.parametrize(
    "row, reason",
    [
        ({"instruction": "x"}, "missing key 'output'"),
        ({"instruction": "x", "output": 5}, "'output' must be a string (got int)"),
        ({"instruction": "x", "input": 1, "output": "y"}, "'input' must be a string (got int)"),
        ({"instruction": " ", "output": "y"}, "'instruction' is empty"),
    ],
)
def test_instruct_rejects(row, reason):
    assert formats.check_row(row, "instruct") == reason


def test_completion_rejects():
    assert formats.check_row({"prompt": "a"}, "completion") == "missing key 'completion'"
    assert formats.check_row({"prompt": "", "completion": "b"}, "completion") == "'prompt' is empty"


def test_declared_format_checks_rows_against_it(tmp_path):
    result = formats.read_jsonl(write(tmp_path, [COMPLETION, CHAT]), fmt="completion")
    assert result.format == "completion"
    assert [r.line for r in result.rejects] == [2]


def test_autodetect_takes_the_majority(tmp_path):
    result = formats.read_jsonl(write(tmp_path, [INSTRUCT, INSTRUCT, COMPLETION]))
    assert result.format == "instruct"
    assert result.rejects[0].line == 3


def test_autodetect_names_the_line_and_keys_when_it_cannot_decide(tmp_path):
    with pytest.raises(FormatError) as info:
        formats.read_jsonl(write(tmp_path, ["not json", {"text": "a", "label": 1}]))
    message = str(info.value)
    assert "cannot tell the format of line 2 (keys: label, text)" in message
    assert "data.format" in message


def test_autodetect_refuses_a_tie(tmp_path):
    with pytest.raises(FormatError, match=r"e\.g\. line 1\) and 1 like completion \(e\.g\. line 2"):
        formats.read_jsonl(write(tmp_path, [INSTRUCT, COMPLETION]))


def test_unknown_declared_format_is_an_error(tmp_path):
    with pytest.raises(FormatError, match="data.format: 'xml' is not one of auto, chat"):
        formats.read_jsonl(write(tmp_path, [CHAT]), fmt="xml")


def test_non_utf8_line_is_rejected(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(json.dumps(CHAT).encode() + b"\n\xff\xfe\n")
    result = formats.read_jsonl(path)
    assert result.rejects == [Reject(2, "not UTF-8 text (byte 0)")]


def test_shipped_sample_has_the_documented_faults():
    result = formats.read_jsonl(SAMPLE)
    assert result.format == "chat"
    assert result.n_read == 30
    assert [r.line for r in result.rejects] == [7, 15]
    assert result.rejects[0].reason.startswith("invalid JSON")
    assert result.rows[2]["messages"] == result.rows[19]["messages"]  # lines 3 and 22
