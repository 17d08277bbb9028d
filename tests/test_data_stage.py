"""Tests for the data stage: sources, rejects, duplicates, splits, token lengths, report."""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import types
from collections import Counter
from pathlib import Path

import pytest

from llmops.data import task_api
from llmops.errors import StageError
from llmops.runner.context import StageContext
from llmops.stages import data

SAMPLE = Path(task_api.__file__).parent / "samples" / "tasks_chat.jsonl"


def params(**overrides) -> dict:
    base = {
        "source": "task_api",
        "path": None,
        "format": "auto",
        "hf_id": None,
        "hf_split": "train",
        "system_prompt": None,
        "n_examples": 400,
        "val_fraction": 0.1,
        "test_fraction": 0.1,
        "seed": 0,
        "dedup": True,
        "max_length": 512,
        "model": {"name": "tiny", "hub_id": None, "chat_template": "chatml"},
    }
    return {**base, **overrides}


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
    ctx = StageContext(run_dir=tmp_path, logger=logging.getLogger("test.data"))
    return data.run(p, inputs or {}, out, ctx), out


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_task_api_splits_are_disjoint_sized_and_stratified(tmp_path, tokenizer_dir):
    report, out = run(tmp_path, params(), {"base": tokenizer_dir})
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
        "read": 400, "valid": 400, "rejected": 0, "duplicates": 0,
        "train": 320, "val": 40, "test": 40,
    }  # fmt: skip
    assert report["tool_distribution"]["test"]["refusal"] == 6
    assert json.loads((out / "data_report.json").read_text()) == report


def test_same_seed_same_split_other_seed_other_split(tmp_path, tokenizer_dir):
    _, a = run(tmp_path, params(), {"base": tokenizer_dir})
    _, b = run(tmp_path, params(), {"base": tokenizer_dir})
    _, c = run(tmp_path, params(seed=1), {"base": tokenizer_dir})
    assert (a / "test.jsonl").read_bytes() == (b / "test.jsonl").read_bytes()
    assert (a / "test.jsonl").read_bytes() != (c / "test.jsonl").read_bytes()


def test_token_lengths_from_tokenizer_json(tmp_path, tokenizer_dir):
    report, _ = run(tmp_path, params(max_length=40), {"base": tokenizer_dir})
    stats = report["token_lengths"]
    assert stats["method"] == "joined_contents"
    assert stats["count"] == 400
    assert 0 < stats["min"] <= stats["p50"] <= stats["p95"] <= stats["max"]
    assert stats["min"] <= stats["mean"] <= stats["max"]
    assert 0 < stats["over_max_length"] <= 400 and stats["max_length"] == 40


def test_over_long_rows_are_kept_and_named_by_line(tmp_path, tokenizer_dir):
    from tokenizers import Tokenizer

    rows = [{"messages": [r["messages"][1], {"role": "assistant", "content": "Done."}]}
            for r in task_api.generate(40, 3)[:20]]
    rows[6]["messages"][0]["content"] = "Please create a task to " + "buy milk and " * 60
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report, out = run(tmp_path, params(source="jsonl", path=str(path), max_length=64),
                      {"base": tokenizer_dir})
    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    tokens = len(tok.encode("\n".join(m["content"] or "" for m in rows[6]["messages"])).ids)
    assert tokens > 64
    assert report["token_lengths"]["over_max_length_rows"] == [{"line": 7, "tokens": tokens}]
    assert report["token_lengths"]["over_max_length"] == 1
    kept = [r["meta"]["line"] for n in ("train", "val", "test") for r in read(out / f"{n}.jsonl")]
    assert 7 in kept and report["counts"]["rejected"] == 0


def test_token_lengths_with_chat_template(tmp_path, tokenizer_dir):
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer.json").write_bytes((tokenizer_dir / "tokenizer.json").read_bytes())
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}"
    )
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": template}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    plain, _ = run(tmp_path, params(), {"base": tokenizer_dir})
    templated, _ = run(tmp_path, params(), {"base": folder})
    assert templated["token_lengths"]["method"] == "chat_template"
    # Each of the 3 messages adds <|im_start|>, <|im_end|> and the role to the plain text.
    assert templated["token_lengths"]["min"] > plain["token_lengths"]["min"] + 6


def test_token_lengths_skipped_without_a_tokenizer(tmp_path):
    report, _ = run(tmp_path, params(n_examples=50))
    assert report["token_lengths"]["tokenizer"] is None
    assert "model.hub_id is empty" in report["token_lengths"]["skipped"]


def test_jsonl_sample_rejects_and_duplicates(tmp_path):
    report, out = run(tmp_path, params(source="jsonl", path=str(SAMPLE), system_prompt="ignored"))
    assert report["format"] == "chat"
    counts = report["counts"]
    assert (counts["read"], counts["valid"], counts["rejected"], counts["duplicates"]) == (
        30, 28, 2, 1,
    )  # fmt: skip
    assert counts["train"] + counts["val"] + counts["test"] == 27
    assert [r["line"] for r in report["rejects"]] == [7, 15]
    assert report["duplicate_lines"] == [{"line": 22, "duplicate_of": 3}]
    assert len(report["input_sha256"]) == 64
    row = read(out / "train.jsonl")[0]
    assert row["meta"]["source"] == "jsonl" and "line" in row["meta"]
    assert "tool" in row["meta"] and "refuse" in row["meta"]
    assert row["messages"][0]["content"] == task_api.SYSTEM_PROMPT


def test_dedup_off_keeps_duplicates(tmp_path):
    report, _ = run(tmp_path, params(source="jsonl", path=str(SAMPLE), dedup=False))
    assert report["counts"]["duplicates"] == 0
    assert sum(report["counts"][k] for k in ("train", "val", "test")) == 28


def test_instruct_file_gets_system_prompt(tmp_path):
    path = tmp_path / "in.jsonl"
    rows = [{"instruction": f"Say {i}", "output": str(i)} for i in range(20)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report, out = run(tmp_path, params(source="jsonl", path=str(path), system_prompt="Be brief."))
    assert report["format"] == "instruct"
    assert (report["counts"]["val"], report["counts"]["test"]) == (2, 2)
    first = read(out / "train.jsonl")[0]
    assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant"]
    assert first["meta"]["tool"] is None and first["meta"]["refuse"] is False


def test_missing_file_names_data_path(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(StageError) as info:
        run(tmp_path, params(source="jsonl", path=str(missing)))
    assert str(info.value) == (
        f"data.path: {missing} does not exist. Point data.path at a JSONL file."
    )


def test_unset_path_names_data_path(tmp_path):
    with pytest.raises(StageError, match=r"^data\.path: not set \(None\)"):
        run(tmp_path, params(source="jsonl"))


def test_undecidable_format_is_a_stage_error(tmp_path):
    path = tmp_path / "odd.jsonl"
    path.write_text('{"text": "a"}\n')
    with pytest.raises(StageError, match=r"data\.format: cannot tell the format of line 1"):
        run(tmp_path, params(source="jsonl", path=str(path)))


def test_file_without_valid_rows_is_a_stage_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("{oops\n")
    with pytest.raises(StageError, match=r"no valid rows in .*line 1: invalid JSON"):
        run(tmp_path, params(source="jsonl", path=str(path)))


def test_bad_fractions_name_the_keys(tmp_path):
    with pytest.raises(StageError, match=r"^data\.val_fraction/test_fraction: must be"):
        run(tmp_path, params(val_fraction=0.6, test_fraction=0.5))


def test_hf_without_id_names_the_key(tmp_path):
    with pytest.raises(StageError, match=r"^data\.hf_id: not set"):
        run(tmp_path, params(source="hf"))


def test_unknown_source_is_named(tmp_path):
    with pytest.raises(StageError, match=r"^data\.source: 'csv' is not one of task_api"):
        run(tmp_path, params(source="csv"))


def test_hf_source_goes_through_load_dataset(tmp_path, monkeypatch):
    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        return [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(10)] + [{"prompt": "x"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    report, out = run(tmp_path, params(source="hf", hf_id="org/set", hf_split="test"))
    assert calls == [("org/set", "test")]
    assert (report["format"], report["origin"]) == ("completion", "org/set[test]")
    assert report["rejects"] == [{"line": 11, "reason": "missing key 'completion'"}]
    assert read(out / "test.jsonl")[0]["meta"]["source"] == "hf"


def test_hf_load_failure_names_hf_id(tmp_path, monkeypatch):
    def load_dataset(name, split):
        raise FileNotFoundError("no such dataset")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(StageError, match=r"^data\.hf_id: cannot load 'org/none' split 'train'"):
        run(tmp_path, params(source="hf", hf_id="org/none"))
