"""Format names and data path checks that run before anything is read (``llmops.data.formats``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmops.data import formats
from llmops.data.convert import FORMATS


def test_every_reader_format_and_both_aliases_are_accepted_names():
    assert formats.NAMES == ("auto", *FORMATS, "chat", "instruct")
    assert [formats.reader_format(n) for n in ("chat", "instruct", "sharegpt", "auto")] == [
        "openai", "alpaca", "sharegpt", "auto"]
    assert formats.PREFERENCE_FORMATS == ("preference", "sharegpt_preference")


def test_a_glob_names_its_files_sorted(tmp_path):
    for name in ("b.jsonl", "a.jsonl", "c.txt"):
        (tmp_path / name).write_text("{}\n")
    assert formats.input_paths(str(tmp_path / "*.jsonl")) == [tmp_path / "a.jsonl",
                                                               tmp_path / "b.jsonl"]


def test_a_save_to_disk_folder_is_one_input_of_all_its_files(tmp_path):
    from datasets import Dataset

    Dataset.from_list([{"text": "a"}, {"text": "b"}]).save_to_disk(str(tmp_path / "ds"))
    (paths,) = [formats.input_paths(tmp_path / "ds")]
    assert paths == [tmp_path / "ds"]
    files = formats.files_of(paths)
    assert {f.name for f in files} >= {"dataset_info.json", "state.json"}
    assert all(f.is_file() and tmp_path / "ds" in f.parents for f in files)


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "{key}: {p} matches no file. Point it at a file, a folder written by "
                     "save_to_disk, or a glob such as data/*.jsonl."),
    (lambda p: p.write_text("x"), "{key}: {p} has suffix '.txt'; allowed: .jsonl, .json, "
                                  ".parquet, .csv (.jsonl and .json also compressed: .gz, .bz2, "
                                  ".xz) or a save_to_disk folder. Rename or convert it."),
    (os.mkfifo, "{key}: {p} is a FIFO (named pipe), not a regular file. Point {key} at a data "
                "file, a save_to_disk folder or a glob."),
])
def test_bad_paths_name_the_key_the_path_and_the_fix(tmp_path, make, message):
    path = tmp_path / "rows.txt"
    make(path)
    key = "data.sources[1].path"
    with pytest.raises(ValueError) as info:
        formats.input_paths(str(path), key)
    assert str(info.value) == message.format(key=key, p=path)


def test_not_regular_tells_a_folder_and_a_fifo_without_opening(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    (tmp_path / "f.jsonl").write_text("{}\n")
    assert formats.not_regular(tmp_path) == "a folder"
    assert formats.not_regular(fifo) == "a FIFO (named pipe)"
    assert formats.not_regular(tmp_path / "f.jsonl") is None
    assert formats.not_regular(Path(tmp_path / "missing")) is None
