"""LLaMA-Factory's dataset_info.json entries as llmops's data options (``llmops.data.registry``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmops.data.registry import read_entry

LF = Path(__file__).parent / "llamafactory"
INFO = LF / "dataset_info.json"


@pytest.mark.parametrize("name,fmt,columns,tags", [
    ("alpaca_en_demo", "alpaca", {}, {}),
    ("glaive_toolcall_en_demo", "sharegpt", {"messages": "conversations", "tools": "tools"}, {}),
    ("kto_en_demo", "openai", {"messages": "messages", "label": "label"}, {}),
    ("mllm_demo", "openai", {"messages": "messages", "images": "images"}, {}),
    ("dpo_en_demo", "sharegpt_preference", {"messages": "conversations", "chosen": "chosen",
                                            "rejected": "rejected"}, {}),
    ("c4_demo", "text", {"text": "text"}, {}),
])
def test_entries_map_onto_format_columns_and_tags(name, fmt, columns, tags):
    entry = read_entry(INFO, name)
    assert (entry["format"], entry["columns"], entry["tags"]) == (fmt, columns, tags)
    assert Path(entry["path"]).is_file()


def test_sharegpt_tags_and_alpaca_columns_are_renamed(tmp_path):
    info = {"custom": {"file_name": "x.json", "formatting": "sharegpt",
                       "columns": {"messages": "dialog", "system": "sys", "kto_tag": "ok"},
                       "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "q",
                                "assistant_tag": "a", "observation_tag": "result",
                                "function_tag": "call"}, "num_samples": 100},
            "orca": {"file_name": "o.json", "columns": {"prompt": "question",
                                                        "response": "answer"}}}
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    entry = read_entry(tmp_path / "dataset_info.json", "custom")
    assert entry["format"] == "sharegpt" and entry["samples"] == 100
    assert entry["columns"] == {"messages": "dialog", "system": "sys", "label": "ok"}
    assert entry["tags"] == {"role": "speaker", "content": "text", "user": "q",
                             "assistant": "a", "observation": "result", "function_call": "call"}
    assert read_entry(tmp_path / "dataset_info.json", "orca")["columns"] == {
        "instruction": "question", "output": "answer"}


@pytest.mark.parametrize("entry,message", [
    ({"hf_hub_url": "llamafactory/alpaca_en"}, "points at hf_hub_url='llamafactory/alpaca_en'"),
    ({"file_name": "x.json", "columns": {"prompt": "a", "rewards": "r"}},
     "columns: 'rewards' is not one llmops can map"),
    ({"file_name": "x.json", "formating": "sharegpt"}, "Did you mean 'formatting'?"),
    ({"file_name": "x.json", "formatting": "llava"}, "formatting 'llava' is not alpaca"),
])
def test_what_cannot_be_mapped_is_an_error_naming_it(tmp_path, entry, message):
    (tmp_path / "dataset_info.json").write_text(json.dumps({"set": entry}))
    with pytest.raises(ValueError, match="^data.name: ") as info:
        read_entry(tmp_path / "dataset_info.json", "set")
    assert message in str(info.value)
    with pytest.raises(ValueError, match="Did you mean 'set'"):
        read_entry(tmp_path / "dataset_info.json", "sett")


def test_a_registry_error_is_a_config_problem_naming_the_key(compose_plan):
    from llmops.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        compose_plan(["data=files", f"data.registry={INFO}", "data.name=alpaca_en"])
    problems = {p.key: p.message for p in info.value.problems}
    assert problems["data.name"].startswith(f"entry 'alpaca_en' of {INFO} points at hf_hub_url")
    with pytest.raises(ConfigError) as info:
        compose_plan(["data=files", f"data.registry={INFO}"])
    assert [p.key for p in info.value.problems] == ["data.name"]
    _, plan = compose_plan(["data=files", f"data.registry={INFO}", "data.name=alpaca_en_demo",
                            "data.columns.output=output"])
    source = plan.stage("data").params["sources"][0]
    assert source["path"] == str((LF / "alpaca_en_demo.json").resolve())
    assert source["format"] == "alpaca" and source["columns"] == {"output": "output"}
