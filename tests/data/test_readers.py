"""read_source: every file type and format to canonical rows with meta, rejects with lines."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llmops.data.convert import FormatError
from llmops.data.prepare import count_rejects
from llmops.data.readers import read_source

DATA = Path(__file__).parent
TAGS = {"role": "speaker", "content": "text", "user": "customer", "assistant": "agent",
        "function_call": "tool_use", "observation": "result"}


@pytest.fixture(autouse=True)
def _quiet():
    import datasets

    datasets.disable_progress_bars()


def read(path, tmp_path, **kwargs):
    return read_source(path, cache_dir=str(tmp_path / "cache"), **kwargs)


def roles(row):
    return [m["role"] for m in row["messages"]]


def calls(row):
    return [(c["function"]["name"], json.loads(c["function"]["arguments"]))
            for m in row["messages"] for c in m["tool_calls"] or []]


def test_openai_jsonl_keeps_tools_calls_tool_messages_and_lines(tmp_path):
    rows, rejects = read(DATA / "openai_tools.jsonl", tmp_path)
    assert len(rows) == 4 and len(rejects) == 0
    assert [r["meta"]["line"] for r in rows] == [1, 2, 3, 4]
    assert {r["meta"]["format"] for r in rows} == {"openai"}
    assert calls(rows[0]) == [("create_task", {"title": "buy milk", "due": "2025-03-01"})]
    assert [t["function"]["name"] for t in json.loads(rows[0]["tools"])] == [
        "create_task", "list_tasks", "complete_task"]
    assert roles(rows[1]) == ["user", "assistant", "tool", "assistant"]
    assert rows[1]["messages"][0]["content"] == "Show my open tasks."
    assert rows[1]["messages"][2]["tool_call_id"] == "call_a"
    assert calls(rows[2]) == [("complete_task", {"task_id": 4}), ("complete_task", {"task_id": 7})]
    assert [m["weight"] for m in rows[3]["messages"]] == [None, 0.0, None, 1.0]
    assert rows[3]["tools"] is None


def test_sharegpt_json_array_with_tools_as_a_json_string(tmp_path):
    rows, rejects = read(DATA / "sharegpt_tools.json", tmp_path)
    assert len(rows) == 3 and len(rejects) == 0
    first = rows[0]
    assert first["meta"]["format"] == "sharegpt" and first["meta"]["line"] == 2
    assert roles(first) == ["system", "user", "assistant", "tool", "assistant"]
    assert calls(first) == [("create_task", {"title": "call mom", "priority": "high"})]
    assert first["messages"][3]["tool_call_id"] == first["messages"][2]["tool_calls"][0]["id"]
    assert json.loads(first["tools"])[0]["type"] == "function"
    assert roles(rows[1]) == ["user", "assistant"] and rows[1]["tools"] is None


def test_sharegpt_with_renamed_columns_and_tags(tmp_path):
    rows, _ = read(DATA / "sharegpt_custom.jsonl", tmp_path, format="sharegpt",
                   columns={"messages": "dialog", "tools": "functions", "system": "persona"},
                   tags=TAGS)
    assert roles(rows[0]) == ["system", "user", "assistant", "tool", "assistant"]
    assert calls(rows[0]) == [("list_tasks", {"status": "done"})]
    assert json.loads(rows[0]["tools"])[1]["function"]["name"] == "list_tasks"
    assert roles(rows[1]) == ["user", "assistant"]


@pytest.mark.parametrize("name, fmt, n, first", [
    ("alpaca.json", "alpaca", 3, [("system", "You translate."),
                                  ("user", "Translate to French.\n\nGood morning"),
                                  ("assistant", "Bonjour")]),
    ("completion.jsonl", "completion", 2, [("user", "The capital of France is"),
                                           ("assistant", " Paris.")]),
])
def test_instruct_and_completion_files_become_chats(tmp_path, name, fmt, n, first):
    rows, rejects = read(DATA / name, tmp_path)
    assert len(rows) == n and len(rejects) == 0
    assert rows[0]["meta"]["format"] == fmt
    assert [(m["role"], m["content"]) for m in rows[0]["messages"]] == first


def test_text_file_becomes_text_rows(tmp_path):
    rows, _ = read(DATA / "text.jsonl", tmp_path)
    assert rows.column_names == ["text", "meta"]
    assert rows[1]["text"] == "A task is open until it is completed."


@pytest.mark.parametrize("name, fmt", [("pairs.jsonl", "preference"),
                                       ("sharegpt_pairs.json", "sharegpt_preference")])
def test_preference_files_become_prompt_chosen_rejected(tmp_path, name, fmt):
    rows, rejects = read(DATA / name, tmp_path)
    assert rows.column_names == ["prompt", "chosen", "rejected", "tools", "meta"]
    assert len(rows) == 2 and len(rejects) == 0 and rows[0]["meta"]["format"] == fmt
    with_call = [r for r in rows if r["chosen"][0]["tool_calls"]][0]
    assert with_call["prompt"][0]["role"] == "system"
    assert with_call["tools"] is not None


def test_json_array_with_one_broken_element_rejects_only_that_element(tmp_path):
    rows, rejects = read(DATA / "broken_array.json", tmp_path)
    assert [(r["meta"]["row"], r["meta"]["line"]) for r in rows] == [(1, 2), (2, 24), (4, 68)]
    assert [r["messages"][0]["content"] for r in rows] == [
        "Complete task 0.", "Complete task 1.", "Complete task 3."]
    assert len(rejects) == 1
    bad = rejects[0]
    assert (bad["meta"]["row"], bad["meta"]["line"]) == (3, 46)
    assert bad["reject"] == {
        "code": "invalid_json", "path": "$",
        "message": "element 2 of the JSON array is not valid JSON (Expecting ',' delimiter at "
                   "line 52, column 7). Fix the JSON."}


def test_jsonl_lines_that_are_not_json_or_utf8_are_rejected_by_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    good = json.dumps({"prompt": "a", "completion": "b"}).encode()
    path.write_bytes(good + b"\n\n" + b'{"prompt": "\xff"}\n' + b"{oops\n" + good + b"\n")
    rows, rejects = read(path, tmp_path)
    assert [r["meta"]["line"] for r in rows] == [1, 5]
    assert [(r["meta"]["line"], r["reject"]["message"]) for r in rejects] == [
        (3, "not UTF-8 text (byte 12). Fix the JSON."),
        (4, "invalid JSON: Expecting property name enclosed in double quotes (column 2). "
            "Fix the JSON.")]
    assert count_rejects(rejects) == {"invalid_json": 2}


def _table(tmp_path):
    """Returns the openai fixture as columns, arguments and tools as JSON text (as users hold)."""
    lines = (DATA / "openai_tools.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines]


def test_parquet_csv_and_save_to_disk_folders(tmp_path):
    import datasets

    rows = _table(tmp_path)
    flat = [{"messages": json.dumps(r["messages"]), "tools": json.dumps(r.get("tools") or [])}
            for r in rows]
    ds = datasets.Dataset.from_list(flat)
    ds.to_parquet(str(tmp_path / "rows.parquet"))
    ds.to_csv(str(tmp_path / "rows.csv"), index=False)
    ds.save_to_disk(str(tmp_path / "saved"))
    for source in ("rows.parquet", "rows.csv", "saved"):
        got, rejects = read(tmp_path / source, tmp_path)
        assert len(got) == 4 and len(rejects) == 0, source
        assert got[2]["meta"] == {"file": str(tmp_path / source), "line": None, "row": 3,
                                  "format": "openai"}
        assert calls(got[2]) == [("complete_task", {"task_id": 4}),
                                 ("complete_task", {"task_id": 7})]
        assert got[3]["tools"] is None


def test_parquet_with_nested_message_structs(tmp_path):
    import datasets

    rows = [{"messages": [{"role": "user", "content": "Complete task 4."},
                          {"role": "assistant", "content": None, "tool_calls": [
                              {"id": "c", "type": "function", "function": {
                                  "name": "complete_task", "arguments": '{"task_id": 4}'}}]}]},
            {"messages": [{"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Hello", "tool_calls": None}]}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "nested.parquet"))
    got, rejects = read(tmp_path / "nested.parquet", tmp_path)
    assert len(rejects) == 0
    assert calls(got[0]) == [("complete_task", {"task_id": 4})]
    assert [m["content"] for m in got[1]["messages"]] == ["Hi", "Hello"]


def test_glob_reads_every_matching_file_with_its_own_format(tmp_path):
    for name in ("openai_tools.jsonl", "sharegpt_tools.json", "alpaca.json"):
        shutil.copy(DATA / name, tmp_path / name)
    rows, _ = read(str(tmp_path / "*.json*"), tmp_path)
    files = [Path(r["meta"]["file"]).name for r in rows]
    assert files == ["alpaca.json"] * 3 + ["openai_tools.jsonl"] * 4 + ["sharegpt_tools.json"] * 3
    assert {r["meta"]["format"] for r in rows} == {"alpaca", "openai", "sharegpt"}


def test_a_changed_file_is_read_again_not_served_from_the_cache(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "a", "completion": "old"}) + "\n")
    assert read(path, tmp_path)[0][0]["messages"][1]["content"] == "old"
    path.write_text(json.dumps({"prompt": "a", "completion": "newer"}) + "\n")
    assert read(path, tmp_path)[0][0]["messages"][1]["content"] == "newer"


def test_source_errors_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(FormatError, match=r"data.path: .*nothing\*.jsonl matches no file"):
        read(str(tmp_path / "nothing*.jsonl"), tmp_path)
    (tmp_path / "rows.txt").write_text("x\n")
    with pytest.raises(FormatError, match=r"has suffix '.txt'; allowed: .jsonl, .json, .parquet, "
                       r".csv \(.jsonl and .json also compressed: .gz, .bz2, .xz\) or a "
                       r"save_to_disk folder"):
        read(tmp_path / "rows.txt", tmp_path)
    (tmp_path / "folder").mkdir()
    with pytest.raises(FormatError, match=r"is a folder but not one written by "
                       r"Dataset.save_to_disk"):
        read(tmp_path / "folder", tmp_path)


@pytest.mark.parametrize("content", ["", "\n\n", "[ ]\n"])
def test_an_empty_file_says_so(tmp_path, content):
    (tmp_path / "rows.json").write_text(content)
    with pytest.raises(FormatError, match=r"rows.json holds no rows. Fill it"):
        read(tmp_path / "rows.json", tmp_path)


def test_files_of_different_kinds_in_one_source_are_refused(tmp_path):
    for name in ("openai_tools.jsonl", "text.jsonl"):
        shutil.copy(DATA / name, tmp_path / name)
    with pytest.raises(FormatError, match=r"openai_tools.jsonl holds chat rows but .*text.jsonl "
                       r"holds text rows"):
        read(str(tmp_path / "*.jsonl"), tmp_path)
