"""The data stage on the shapes of data people share today, one fixture each: Hermes function
calling, xLAM, OpenAI typed content parts with reasoning, LLaMA-Factory's registry and demo files
(KTO labels, images). Each test counts rows, calls, reasoning traces and labels in and out of
the data stage, as data_report.json and the split files say.

Params come from compiled plans (``stage_params``), as a real run passes them.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from pathlib import Path

import pytest

from llmops.core.context import StageContext
from llmops.errors import EXIT_DATA_REJECTED, DataRejected
from llmops.stages import data

HERE = Path(__file__).parent
LF = HERE / "llamafactory"
SPLITS = ("train", "val", "test")


def run(tmp_path: Path, p: dict, inputs: dict | None = None, logger: str = "test.formats"):
    out = Path(tempfile.mkdtemp(dir=tmp_path))
    ctx = StageContext(run_dir=tmp_path, logger=logging.getLogger(logger), show_progress=False)
    return data.run(p, inputs or {}, out, ctx), out


def written(out: Path) -> dict[str, list[dict]]:
    return {s: [json.loads(line) for line in (out / f"{s}.jsonl").read_text().splitlines()]
            for s in SPLITS}


def all_rows(out: Path) -> list[dict]:
    return [r for rows in written(out).values() for r in rows]


def calls_out(rows: list[dict]) -> int:
    return sum(len(m.get("tool_calls") or []) for r in rows for m in r["messages"])


def traces_out(rows: list[dict]) -> int:
    return sum(1 for r in rows for m in r["messages"] if m.get("reasoning_content"))


def files_params(stage_params, path: Path, *more: str) -> dict:
    return stage_params("data", "data=files", f"data.path={path}", "data.max_length=4096",
                        *more)


def test_hermes_rows_lift_tools_calls_and_responses_out_of_the_text(tmp_path, stage_params):
    source = json.loads((HERE / "hermes_function_calling.json").read_text())
    calls_in = sum(t["value"].count("<tool_call>") for r in source for t in r["conversations"]
                   if t["from"] == "gpt")
    responses_in = sum(t["value"].count("<tool_response>") for r in source
                       for t in r["conversations"] if t["from"] == "tool")
    report, out = run(tmp_path, files_params(stage_params, HERE / "hermes_function_calling.json"))
    rows = all_rows(out)
    assert report["formats"] == {"hermes": 5}
    assert report["counts"]["read"] == report["counts"]["valid"] == len(rows) == len(source)
    assert report["tool_calls"]["calls"] == calls_out(rows) == calls_in == 7
    assert sum(1 for r in rows for m in r["messages"] if m["role"] == "tool") == responses_in
    for r in rows:
        text = json.dumps(r["messages"][1:])  # the system turn keeps its instructions as prose
        assert "<tool_call>" not in text and "<tool_response>" not in text
        assert "<tools>\n" not in r["messages"][0]["content"]
        assert r["tools"] and all(t["type"] == "function" for t in r["tools"])
    parallel = next(r for r in rows if "Microsoft" in r["messages"][1]["content"])
    calls = parallel["messages"][2]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["convert_currency", "get_stock_price"]
    answers = [m for m in parallel["messages"] if m["role"] == "tool"]
    assert [a["tool_call_id"] for a in answers] == [c["id"] for c in calls]
    assert json.loads(calls[0]["function"]["arguments"]) == {
        "amount": 250, "from_currency": "EUR", "to_currency": "USD"}
    names = {u["name"] for u in report["unused"]}
    assert names == {"id", "category", "subcategory", "task"}


def test_xlam_rows_become_calls_checked_against_schemas_from_its_type_notation(
        tmp_path, stage_params):
    source = json.loads((HERE / "xlam_function_calling.json").read_text())
    calls_in = sum(len(json.loads(r["answers"])) for r in source)
    report, out = run(tmp_path, files_params(stage_params, HERE / "xlam_function_calling.json"))
    rows = all_rows(out)
    assert report["formats"] == {"xlam": 4}
    assert report["counts"]["valid"] == len(rows) == len(source)
    assert report["tool_calls"]["calls"] == calls_out(rows) == calls_in == 8
    hotels = next(r for r in rows if "hotels" in r["messages"][0]["content"])
    schema = hotels["tools"][0]["function"]["parameters"]
    assert schema["required"] == ["city"]
    assert schema["properties"]["amenities"] == {
        "type": "array", "items": {"type": "string"}, "description": "Required amenities.",
        "default": []}
    assert schema["properties"]["max_price"]["type"] == "number"
    assert schema["properties"]["filters"]["type"] == "object"
    assert [m["role"] for m in hotels["messages"]] == ["user", "assistant"]
    assert [u["name"] for u in report["unused"]] == ["id"]


def test_xlam_call_that_breaks_its_converted_schema_is_one_reject(tmp_path, stage_params):
    rows = json.loads((HERE / "xlam_function_calling.json").read_text())
    bad = dict(rows[1], answers=json.dumps([{"name": "fibonacci", "arguments": {"n": "ten"}}]))
    path = tmp_path / "xlam.json"
    path.write_text(json.dumps([*rows, bad]))
    report, _ = run(tmp_path, files_params(stage_params, path))
    assert report["counts"]["rejected"] == 1
    assert report["rejects"][0]["code"] == "argument_type"
    assert report["rejects"][0]["path"] == "messages[1].tool_calls[0].function.arguments.n"


def test_typed_parts_and_every_reasoning_spelling_reach_the_canonical_row(tmp_path,
                                                                         stage_params):
    lines = (HERE / "openai_parts_reasoning.jsonl").read_text().splitlines()
    source = [json.loads(line) for line in lines]
    traces_in = sum(1 for r in source for m in r["messages"] if m["role"] == "assistant" and (
        m.get("reasoning_content") or m.get("reasoning") or "<think>" in str(m["content"])
        or any(isinstance(p, dict) and p.get("type") in ("reasoning", "thinking")
               for p in (m["content"] if isinstance(m["content"], list) else []))))
    report, out = run(tmp_path, files_params(stage_params, HERE / "openai_parts_reasoning.jsonl"))
    rows = all_rows(out)
    assert report["counts"]["valid"] == len(rows) == len(source) == 6
    assert traces_out(rows) == traces_in == report["reasoning"]["traces"] == 6
    assert report["reasoning"]["rows"] == 5
    assert report["tool_calls"]["calls"] == calls_out(rows) == 2
    for r in rows:
        for m in r["messages"]:
            assert isinstance(m["content"], (str, type(None)))
            assert "<think>" not in (m["content"] or "")
            assert "reasoning_content" not in m or m["role"] == "assistant"
    weather = next(r for r in rows if "Paris" in r["messages"][1]["content"])
    call = weather["messages"][2]
    assert call["content"] == "Let me check."
    assert call["reasoning_content"].startswith("The user wants the weather in Paris")
    assert weather["messages"][3]["tool_call_id"] == call["tool_calls"][0]["id"]
    strawberry = next(r for r in rows if "strawberry" in r["messages"][0]["content"])
    assert strawberry["messages"][1] == {
        "role": "assistant", "content": "There are 3 r's in \"strawberry\".",
        "reasoning_content": "s-t-r-a-w-b-e-r-r-y: r at positions 3, 8 and 9."}
    rome = next(r for r in rows if "Italy" in r["messages"][1]["content"])
    assert rome["messages"][0]["role"] == "system"  # OpenAI's developer role


def test_kto_labels_from_a_registry_entry_keep_undesirable_rows_out_of_sft_and_eval(
        tmp_path, stage_params, caplog):
    source = json.loads((LF / "kto_en_demo.json").read_text())
    p = stage_params("data", "data=files", f"data.registry={LF / 'dataset_info.json'}",
                     "data.name=kto_en_demo", "data.max_length=4096")
    assert p["sources"][0]["columns"] == {"messages": "messages", "label": "label"}
    assert p["sources"][0]["format"] == "openai"
    with caplog.at_level(logging.WARNING):
        report, out = run(tmp_path, p)
    splits = written(out)
    desirable = sum(1 for r in source if r["label"])
    assert report["labels"]["desirable"] == desirable == 4
    assert report["labels"]["undesirable"] == len(source) - desirable == 4
    assert report["labels"]["sft_leaves_out"] == 4
    assert sum(1 for r in splits["train"] if r["label"] is False) == 4
    assert all(r["label"] is True for s in ("val", "test") for r in splits[s])
    bad = {r["messages"][1]["content"] for r in source if not r["label"]}
    assert not bad & {r["messages"][1]["content"] for s in ("val", "test") for r in splits[s]}
    assert "sft leaves those 4 out" in caplog.text


def test_a_label_that_is_not_a_boolean_is_a_reject_never_a_guess(tmp_path, stage_params):
    path = tmp_path / "labels.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"q{i}"},
                          {"role": "assistant", "content": f"a{i}"}], "label": label}
            for i, label in enumerate([True, "false", "FALSE", True, 1, "maybe"])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report, out = run(tmp_path, files_params(stage_params, path))
    assert report["rejects_by_code"] == {"bad_label": 2}
    assert [r["line"] for r in report["rejects"]] == [5, 6]
    assert report["labels"]["undesirable"] == 2


def test_images_are_refused_by_name_with_row_file_line_and_the_fix(tmp_path, stage_params):
    p = stage_params("data", "data=files", f"data.registry={LF / 'dataset_info.json'}",
                     "data.name=mllm_demo")
    with pytest.raises(DataRejected) as info:
        run(tmp_path, p)
    text = str(info.value)
    assert info.value.exit_code == EXIT_DATA_REJECTED
    assert "3 rows hold images, audio or video" in text
    assert re.search(r"mllm_demo\.json:\d+ images: \[unsupported_modality\] holds 2 images",
                     text)
    assert "llmops trains text models; drop these rows with data.on_unsupported=drop" in text
    assert not list(tmp_path.rglob("train.jsonl"))  # stopped before writing anything


def test_on_unsupported_drop_leaves_them_out_and_lists_them(tmp_path, stage_params):
    mllm = json.loads((LF / "mllm_demo.json").read_text())
    plain = [{"messages": [{"role": "user", "content": f"Say {w}."},
                           {"role": "assistant", "content": w}]} for w in
             ("one", "two", "three", "four", "five")]
    parts = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]},
        {"role": "assistant", "content": "A cat."}]}
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [*mllm, *plain, parts]))
    report, out = run(tmp_path, files_params(stage_params, path, "data.on_unsupported=drop"))
    assert report["counts"]["valid"] == len(all_rows(out)) == 5
    assert report["rejects_by_code"] == {"unsupported_modality": 4}
    assert report["rejects"][-1]["path"] == "messages[0].content[1].type"


def test_unused_columns_are_listed_and_meaningful_ones_warned_about(tmp_path, stage_params,
                                                                  caplog):
    path = tmp_path / "scored.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"q{i}"},
                          {"role": "assistant", "content": f"a{i}", "loss": 0.5}],
             "score": i / 10, "source_url": f"https://example.com/{i}"} for i in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.WARNING):
        report, _ = run(tmp_path, files_params(stage_params, path))
    listed = {u["name"]: u for u in report["unused"]}
    assert listed["score"] == {"name": "score", "count": 6, "example": 0.0, "meaningful": True}
    assert listed["source_url"]["meaningful"] is False
    assert listed["messages[].loss"]["count"] == 6
    assert "'score' (6 rows)" in caplog.text and "source_url" not in caplog.text


def test_the_tiny_model_says_what_it_is_on_a_users_files(tmp_path, stage_params, caplog):
    p = files_params(stage_params, LF / "alpaca_en_demo.json")
    with caplog.at_level(logging.WARNING):
        report, _ = run(tmp_path, p, {"base": tmp_path / "no_tokenizer_here"})
    assert "vocabulary was made from the bundled Task-API text" in report["model_note"]
    assert "model=hub" in caplog.text and "model=qwen0.5b" in caplog.text
