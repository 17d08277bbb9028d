"""Tests for the data stage: sources, rejects, duplicates, splits, token lengths, report.

Params come from compiled plans (``stage_params``), so every test runs what a real run passes.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from llmops.core.context import StageContext
from llmops.data import task_api
from llmops.errors import EXIT_DATA_REJECTED, DataRejected, StageError
from llmops.stages import data

SAMPLE = Path(task_api.__file__).parent / "samples" / "tasks_chat.jsonl"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """Builds a small byte-level BPE tokenizer on generated rows (tokenizer.json only)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = ["\n".join(m["content"] or "" for m in r["messages"])
             for r in task_api.generate(300, 1)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    folder = tmp_path_factory.mktemp("tok")
    tok.save(str(folder / "tokenizer.json"))
    return folder


def run(tmp_path: Path, p: dict, inputs: dict | None = None) -> tuple[dict, Path]:
    out = Path(tempfile.mkdtemp(dir=tmp_path))
    ctx = StageContext(run_dir=tmp_path, logger=logging.getLogger("test.data"),
                       show_progress=False)
    return data.run(p, inputs or {}, out, ctx), out


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_task_api_splits_are_disjoint_sized_and_stratified(tmp_path, stage_params,
                                                           tokenizer_dir):
    report, out = run(tmp_path, stage_params("data", "data.n_examples=400", "data.max_length=4096"),
                      {"base": tokenizer_dir})
    splits = {name: read(out / f"{name}.jsonl") for name in ("train", "val", "test")}
    assert {k: len(v) for k, v in splits.items()} == {"train": 320, "val": 40, "test": 40}
    users = {k: {r["messages"][1]["content"] for r in v} for k, v in splits.items()}
    assert not users["train"] & users["val"] and not users["train"] & users["test"]
    assert not users["val"] & users["test"]
    for name in ("test", "val"):
        seen = Counter(r["meta"]["tool"] for r in splits[name])
        assert set(seen) == set(task_api.TOOLS) | {None}
    assert all(r["messages"][-1]["role"] == "assistant" for r in splits["test"])
    assert report["counts"] == {
        "read": 400, "valid": 400, "rejected": 0, "duplicates": 0, "repeated": 0,
        "train": 320, "val": 40, "test": 40,
    }  # fmt: skip
    assert report["tool_distribution"]["test"]["refusal"] == 6
    assert report["sources"][0]["name"] == "task_api"
    assert json.loads((out / "data_report.json").read_text()) == report


def test_same_seed_same_split_other_seed_other_split(tmp_path, stage_params):
    p = stage_params("data", "data.n_examples=200")
    _, a = run(tmp_path, p)
    _, b = run(tmp_path, p)
    _, c = run(tmp_path, {**p, "seed": 1})
    assert (a / "test.jsonl").read_bytes() == (b / "test.jsonl").read_bytes()
    assert (a / "test.jsonl").read_bytes() != (c / "test.jsonl").read_bytes()


def test_token_lengths_from_the_model_tokenizer(tmp_path, stage_params, tokenizer_dir):
    report, _ = run(tmp_path, stage_params("data", "data.n_examples=200", "data.max_length=4096"),
                    {"base": tokenizer_dir})
    stats = report["token_lengths"]
    assert (stats["tokenizer"], stats["method"]) == (str(tokenizer_dir), "plain_text")
    assert stats["count"] == 200
    assert 0 < stats["min"] <= stats["p50"] <= stats["p95"] <= stats["max"]
    assert stats["min"] <= stats["mean"] <= stats["max"]


def test_over_long_rows_are_rejected_by_line_not_truncated(tmp_path, stage_params,
                                                           tokenizer_dir):
    from tokenizers import Tokenizer

    rows = [{"messages": [r["messages"][1], {"role": "assistant", "content": "Done."}]}
            for r in task_api.generate(40, 3)[:20]]
    rows[6]["messages"][0]["content"] = "Please create a task to " + "buy milk and " * 60
    path = write_rows(tmp_path / "rows.jsonl", rows)
    report, out = run(tmp_path, stage_params("data", "data=files", f"data.path={path}",
                                             "data.max_length=64"), {"base": tokenizer_dir})
    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    tokens = len(tok.encode("\n".join(m["content"] or "" for m in rows[6]["messages"]) + "\n").ids)
    assert tokens > 64
    assert report["rejects_by_code"] == {"too_long": 1}
    (reject,) = report["rejects"]
    assert (reject["line"], reject["code"], reject["path"]) == (7, "too_long", "$")
    assert reject["message"] == (f"{tokens} tokens > data.max_length=64. Raise data.max_length "
                                 "or shorten the row; it is not truncated.")
    kept = [r["meta"]["line"] for n in ("train", "val", "test") for r in read(out / f"{n}.jsonl")]
    assert 7 not in kept and len(kept) == 19


def test_token_lengths_with_chat_template(tmp_path, stage_params, tokenizer_dir):
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer.json").write_bytes((tokenizer_dir / "tokenizer.json").read_bytes())
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}"
    )
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": template}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    # Rows without tools: this template renders messages only, and plain text would count tools.
    rows = [{"messages": r["messages"]} for r in task_api.generate(100, 0)
            if not r["meta"]["refuse"]]
    p = stage_params("data", "data=files", f"data.path={write_rows(tmp_path / 'rows.jsonl', rows)}",
                     "data.max_length=4096")
    plain, _ = run(tmp_path, p, {"base": tokenizer_dir})
    templated, _ = run(tmp_path, p, {"base": folder})
    assert templated["token_lengths"]["method"] == "chat_template"
    # Each of the 3 messages adds <|im_start|>, <|im_end|> and the role to the plain text.
    assert templated["token_lengths"]["min"] > plain["token_lengths"]["min"] + 6


def test_hub_model_lengths_are_its_tokenizer_tokens_through_its_chat_template(
        tmp_path, stage_params, real_model):
    from transformers import AutoTokenizer

    folder = real_model("qwen2")
    path = Path(__file__).parent / "openai_tools.jsonl"
    p = stage_params("data", "data=files", f"data.path={path}", "data.max_length=4096",
                     "model=qwen0.5b", f"model.hub_id={folder}")
    report, out = run(tmp_path, p)
    stats = report["token_lengths"]
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    expected = []
    for row in (r for n in ("train", "val", "test") for r in read(out / f"{n}.jsonl")):
        for m in row["messages"]:
            for call in m.get("tool_calls") or []:
                call["function"]["arguments"] = json.loads(call["function"]["arguments"])
        expected.append(len(tok.apply_chat_template(row["messages"], tools=row.get("tools"),
                                                    tokenize=True, return_dict=True)["input_ids"]))
    assert len(expected) == 4 and min(expected) > 0
    assert (stats["count"], stats["min"], stats["max"]) == (4, min(expected), max(expected))
    assert stats["mean"] == round(sum(expected) / 4, 2)
    assert (stats["tokenizer"], stats["method"]) == (str(folder), "chat_template")
    loaded = dict(stats["loaded"])
    assert loaded.pop("class")  # the tokenizer class the stage used, named
    assert loaded == {"from": "local folder", "local_files_only": True, "vocab_size": len(tok)}
    assert len(tok) > 150_000  # Qwen2's real vocabulary, not a stand-in


def test_hub_id_lengths_come_from_the_local_hub_cache_only(tmp_path, stage_params):
    path = Path(__file__).parent / "openai_tools.jsonl"
    p = stage_params("data", "data=files", f"data.path={path}", "model=qwen0.5b",
                     "model.hub_id=llmops-tests/never-downloaded")
    report, _ = run(tmp_path, p)
    stats = report["token_lengths"]
    assert (stats["tokenizer"], stats["method"]) == ("llmops-tests/never-downloaded",
                                                     "estimated")
    assert stats["loaded"] == {"from": "local hub cache", "local_files_only": True}
    assert stats["note"].startswith("no tokenizer could be loaded offline "
                                    "(llmops-tests/never-downloaded is not in the local hub "
                                    "cache (")


def test_without_a_tokenizer_lengths_are_estimated_and_long_rows_only_flagged(
        tmp_path, stage_params):
    rows = [{"prompt": f"Question {i}?", "completion": f"Answer {i}."} for i in range(10)]
    rows[4]["completion"] = "long " * 100
    path = write_rows(tmp_path / "c.jsonl", rows)
    p = stage_params("data", "data=files", f"data.path={path}", "data.max_length=64",
                     "model=qwen3b", "dry_run=true", hardware="a100_40g")
    p["model"]["hub_id"] = str(tmp_path / "no_such_model")
    report, _ = run(tmp_path, p)
    stats = report["token_lengths"]
    assert stats["method"] == "estimated"
    assert stats["note"].startswith("no tokenizer could be loaded offline (")
    assert "estimated at about 4 characters a token" in stats["note"]
    assert stats["over_max_length"] == 1
    assert [(r["line"], r["tokens"]) for r in stats["over_max_length_rows"]] == [(5, 129)]
    assert report["counts"]["rejected"] == 0 and report["counts"]["valid"] == 10


def test_jsonl_sample_rejects_and_duplicates(tmp_path, stage_params):
    report, out = run(tmp_path, stage_params("data", "data=jsonl", f"data.path={SAMPLE}",
                                             "data.system_prompt=ignored"))
    assert report["formats"] == {"openai": 28}
    counts = report["counts"]
    assert (counts["read"], counts["valid"], counts["rejected"], counts["duplicates"]) == (
        30, 28, 2, 1,
    )  # fmt: skip
    assert counts["train"] + counts["val"] + counts["test"] == 27
    assert [(r["line"], r["code"]) for r in report["rejects"]] == [
        (7, "invalid_json"), (15, "no_assistant_end")]
    assert report["duplicate_rows"] == [{"file": str(SAMPLE), "line": 22, "row": 22,
                                         "duplicate_of": {"file": str(SAMPLE), "line": 3,
                                                          "row": 3}}]
    row = read(out / "train.jsonl")[0]
    assert row["meta"]["source"] == str(SAMPLE) and row["meta"]["file"] == str(SAMPLE)
    assert {"line", "row", "kind", "tool", "refuse"} <= set(row["meta"])
    assert row["messages"][0]["content"] == task_api.SYSTEM_PROMPT


def test_dedup_off_keeps_duplicates(tmp_path, stage_params):
    report, _ = run(tmp_path, stage_params("data", "data=jsonl", f"data.path={SAMPLE}",
                                           "data.dedup=false"))
    assert report["counts"]["duplicates"] == 0
    assert sum(report["counts"][k] for k in ("train", "val", "test")) == 28


def test_instruct_alias_reads_alpaca_and_gets_the_system_prompt(tmp_path, stage_params):
    path = write_rows(tmp_path / "in.jsonl",
                      [{"instruction": f"Say {i}", "output": str(i)} for i in range(20)])
    report, out = run(tmp_path, stage_params("data", "data=jsonl", f"data.path={path}",
                                             "data.format=instruct",
                                             "data.system_prompt=Be brief."))
    assert report["formats"] == {"alpaca": 20}
    assert (report["counts"]["val"], report["counts"]["test"]) == (2, 2)
    first = read(out / "train.jsonl")[0]
    assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant"]
    assert first["messages"][0]["content"] == "Be brief."
    assert first["meta"]["kind"] == "chat" and first["meta"]["refuse"] is False


def test_file_without_valid_rows_is_a_stage_error(tmp_path, stage_params):
    path = write_rows(tmp_path / "bad.jsonl", ["{oops", {"prompt": "x"}])
    with pytest.raises(StageError, match=r"^data: no valid rows in .*bad\.jsonl \(2 read, 2 "
                                         r"rejected: .*bad\.jsonl:1 \$: \[invalid_json\]"):
        run(tmp_path, stage_params("data", "data=files", f"data.path={path}",
                                   "data.format=completion"))


def test_too_few_rows_to_split_names_the_fractions(tmp_path, stage_params):
    path = write_rows(tmp_path / "four.jsonl", [{"text": t} for t in "abcd"])
    p = stage_params("data", "data=files", f"data.path={path}", "data.val_fraction=0.45",
                     "data.test_fraction=0.45")
    with pytest.raises(StageError, match=r"^data: 4 valid rows are too few to split with "
                                         r"val_fraction=0\.45 and test_fraction=0\.45"):
        run(tmp_path, p)


def test_undecidable_format_names_the_file_and_keys(tmp_path, stage_params):
    path = write_rows(tmp_path / "odd.jsonl", [{"label": 1, "body": "a"}])
    with pytest.raises(StageError, match=r"^data\.format: cannot tell the format of "
                                         r".*odd\.jsonl \(first row's keys: body, label\)"):
        run(tmp_path, stage_params("data", "data=files", f"data.path={path}"))


def test_on_error_fail_stops_before_writing_with_its_exit_code(tmp_path, stage_params):
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(10)] + [{"prompt": "x"}]
    path = write_rows(tmp_path / "c.jsonl", rows)
    p = stage_params("data", "data=files", f"data.path={path}", "data.on_error=fail")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DataRejected) as info:
        data.run(p, {}, out, StageContext(run_dir=tmp_path, show_progress=False))
    assert info.value.exit_code == EXIT_DATA_REJECTED == 5
    text = str(info.value)
    assert text.startswith("data: 1 rows rejected (missing_field 1) and data.on_error=fail")
    assert f"{path}:11 completion: [missing_field]" in text
    assert "set data.on_error=keep to train on the 10 valid rows" in text
    assert list(out.iterdir()) == []


def test_hf_source_reads_a_local_dataset_folder_through_load_dataset(tmp_path, stage_params):
    folder = tmp_path / "hub_set"
    folder.mkdir()
    write_rows(folder / "train.jsonl",
               [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(10)] + [{"prompt": "x"}])
    report, out = run(tmp_path, stage_params("data", "data=hf", f"data.hf_id={folder}"))
    assert report["origin"] == f"{folder}[train]"
    assert report["formats"] == {"completion": 10}
    assert [(r["row"], r["code"], r["path"]) for r in report["rejects"]] == [
        (11, "missing_field", "completion")]
    assert read(out / "test.jsonl")[0]["meta"]["source"] == "hf"


def test_hf_load_failure_names_hf_id(tmp_path, stage_params):
    missing = tmp_path / "none"
    with pytest.raises(StageError, match=r"^data\.hf_id: cannot load '.*none' split 'train'"):
        run(tmp_path, stage_params("data", "data=hf", f"data.hf_id={missing}"))


def test_num_proc_null_uses_the_cores_for_big_inputs_only(tmp_path):
    """data.num_proc=null: one process for a small file (workers cost more than they save), one
    per core (at most 4) once the input passes AUTO_PROCS_BYTES."""
    import os

    from llmops.stages import data_io

    small = tmp_path / "small.jsonl"
    small.write_text('{"text": "x"}\n')
    assert data_io.auto_procs([small]) is None
    big = tmp_path / "big.jsonl"
    with open(big, "wb") as f:
        f.truncate(data_io.AUTO_PROCS_BYTES)
    cores = len(os.sched_getaffinity(0))
    assert data_io.auto_procs([big]) == (min(4, cores) if cores > 1 else None)
    assert data_io.auto_procs([tmp_path]) == data_io.auto_procs([big])  # a folder: its files
