"""Cross-field rules of the data group: the split, where the rows come from, mixtures.

A path or glob is checked without opening any file (``formats.input_paths``): it must match
files the readers take, so a typo fails at composition with exit 2, before anything is written.
"""

from __future__ import annotations

from llmops.config.schema import DataConfig, DataSource
from llmops.data import formats, registry
from llmops.errors import Problem

FILE_SOURCES = ("files", "jsonl")


def data_problems(d: DataConfig, method: str) -> list[Problem]:
    """Returns the problems of the data group for a run whose train.method is ``method``."""
    out = []
    if d.val_fraction + d.test_fraction >= 1:
        out.append(Problem(
            "data.val_fraction",
            f"val_fraction + test_fraction = {d.val_fraction + d.test_fraction:g} leaves no "
            "training rows; the sum must be below 1, e.g. data.val_fraction=0.1 "
            "data.test_fraction=0.1.",
        ))
    if d.source in FILE_SOURCES:
        out += _file_problems(d, method)
    elif d.path or d.sources or d.registry:
        key = "data.path" if d.path else "data.registry" if d.registry else "data.sources"
        out.append(Problem(key, f"is only read with data=files (got data.source={d.source}). "
                                f"Use data=files {key}=..."))
    if d.source == "hf" and not d.hf_id:
        out.append(Problem("data.hf_id", "is required for data=hf. Set data.hf_id=org/dataset."))
    return out


def _file_problems(d: DataConfig, method: str) -> list[Problem]:
    if d.registry or d.name:
        return _registry_problems(d, method)
    if d.path and d.sources:
        return [Problem("data.sources", f"is set together with data.path={d.path}; use one. "
                                        "Put the path in the list: data.sources='[{path: "
                                        f"{d.path}}}, ...]', or set data.sources=[].")]
    if not d.path and not d.sources:
        return [Problem("data.path", f"is required for data={d.source}. Set data.path=FILE (a "
                                     ".jsonl/.json/.parquet/.csv file, a save_to_disk folder or a "
                                     "glob), or list several in data.sources.")]
    if d.path:
        return _path_problems(d.path, "data.path") + _format_problems(d.format, "data.format",
                                                                         method)
    out = []
    for i, src in enumerate(d.sources):
        out += _source_problems(src, f"data.sources[{i}]", method)
    return out


def _registry_problems(d: DataConfig, method: str) -> list[Problem]:
    if not d.registry or not d.name:
        key, other = ("data.name", "data.registry") if d.registry else ("data.registry",
                                                                        "data.name")
        return [Problem(key, f"is required with {other}: data.registry=PATH/dataset_info.json "
                             "data.name=ENTRY reads one LLaMA-Factory dataset entry.")]
    if d.path or d.sources:
        key = "data.path" if d.path else "data.sources"
        return [Problem(key, "is set together with data.registry; the registry entry names the "
                             f"file. Use one: unset {key}, or unset data.registry and data.name.")]
    try:
        entry = registry.read_entry(d.registry, d.name)
    except ValueError as exc:
        key, _, text = str(exc).partition(": ")
        return [Problem(key, text)]
    return _path_problems(entry["path"], "data.registry") + _format_problems(
        entry["format"], "data.registry", method)


def _path_problems(path: str, key: str) -> list[Problem]:
    try:
        formats.input_paths(path, key)
    except ValueError as exc:
        text = str(exc)
        return [Problem(key, text.removeprefix(f"{key}: "))]
    return []


def _format_problems(fmt: str, key: str, method: str) -> list[Problem]:
    if formats.reader_format(fmt) in formats.PREFERENCE_FORMATS and method == "none":
        return [Problem(key, f"'{fmt}' rows are preference pairs, but train.method=none trains "
                             "nothing. Use train=dpo or train=sft_dpo.")]
    return []


def _source_problems(src: DataSource, key: str, method: str) -> list[Problem]:
    out = _path_problems(src.path, f"{key}.path")
    out += _format_problems(src.format, f"{key}.format", method)
    if src.weight is not None and src.samples is not None:
        out.append(Problem(f"{key}.samples", f"is set together with weight={src.weight:g}; a "
                                             "source takes either a share (weight) or a count "
                                             "(samples). Remove one."))
    return out
