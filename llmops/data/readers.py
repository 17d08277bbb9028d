"""Reads a user's data files into a ``datasets.Dataset`` of canonical rows, and their rejects.

Contract, for the data stage:

    rows, rejects = read_source(path_or_glob, format="auto", columns=None, tags=None)

- ``path_or_glob``: a file (``.jsonl``; ``.json`` holding an array, or JSON Lines under that
  name; ``.parquet``; ``.csv``), a folder written by ``Dataset.save_to_disk``, or a glob pattern
  (``data/*.jsonl``, ``**`` allowed) over such files. Every file of one source must convert to
  the same kind of row (chat, preference or text); formats may differ per file with ``auto``.
- ``rows``: the canonical columns of that kind (``canonical.COLUMNS`` less ``reject``), with
  ``meta`` naming each row's file, line and record number, Arrow-backed (memory-mapped from
  ``cache_dir``, or datasets' cache) so nothing holds all rows in Python.
- ``rejects``: ``meta`` and ``reject`` (``{"code", "path", "message"}``) of each record that could
  not be read or converted: a line that is not JSON or UTF-8, a broken element of a JSON array
  (its index and line), a row that does not fit its format. ``prepare.count_rejects`` counts
  them by code.

JSON and JSON Lines are cut into records here (one JSON text per record, with its line), so a
broken record rejects only itself; parsing and conversion run in ``Dataset.map`` (``num_proc``).
Other files load with ``datasets`` and keep their columns. ``datasets`` is imported inside the
functions. Checks of tool calls, order and length are ``toolcheck``'s, run after this.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from llmops.data.canonical import features
from llmops.data.convert import ERROR, LINE, RAW, Converter, FormatError, source_rows
from llmops.data.detect import detect_format
from llmops.data.prepare import ArrowBatches, split_rejects

SUFFIXES: tuple[str, ...] = (".jsonl", ".json", ".parquet", ".csv")
DETECT_SAMPLE = 200
BATCH = 10_000
BLOCK = 1 << 24  # bytes of JSON Lines decoded at once


def expand(path_or_glob: str | Path) -> list[Path]:
    """Returns the files (or save_to_disk folders) a path or glob pattern names, sorted.

    Raises:
        FormatError: If nothing matches, or a match is neither a known file nor a dataset folder.
    """
    text = str(Path(path_or_glob).expanduser())
    paths = [Path(p) for p in sorted(glob.glob(text, recursive=True))] if glob.has_magic(
        text) else [Path(text)]
    paths = [p for p in paths if p.exists()]
    if not paths:
        raise FormatError(f"data.path: {text} matches no file. Point it at a file, a folder "
                          "written by save_to_disk, or a glob such as data/*.jsonl.")
    for p in paths:
        if p.is_dir() and not (p / "dataset_info.json").is_file():
            raise FormatError(f"data.path: {p} is a folder but not one written by "
                              "Dataset.save_to_disk. Point at its files, e.g. "
                              f"{p}/*.jsonl.")
        if p.is_file() and p.suffix.lower() not in SUFFIXES:
            raise FormatError(f"data.path: {p} has suffix {p.suffix!r}; allowed: "
                              f"{', '.join(SUFFIXES)} or a save_to_disk folder. Rename or "
                              "convert it.")
    return paths


def _head(path: Path, size: int = 1 << 16) -> bytes:
    """Returns the file's first bytes without a BOM and whitespace (all of it when small)."""
    with open(path, "rb") as f:
        head = f.read(size).removeprefix(b"\xef\xbb\xbf")
    return b"".join(head.split()) if len(head) < size else head.lstrip()


def _jsonl_records(path: str) -> Iterator[tuple[str | None, str | None, int]]:
    """Yields ``(json text, error, line)`` per non-blank line.

    The file is read and decoded in blocks of whole lines (one ``decode`` per block); only a
    block that is not UTF-8 is decoded line by line, to name the line and byte that is not.
    """
    number = 0
    with open(path, "rb") as handle:
        rest = b""
        while True:
            block = handle.read(BLOCK)
            data = rest + block
            cut = data.rfind(b"\n") + 1 if block else len(data)
            data, rest = data[:cut], data[cut:]
            if not data:
                if not block:
                    return
                continue
            lines = data.split(b"\n")
            if data.endswith(b"\n"):
                lines.pop()
            # utf-8-sig on line 1: a byte order mark opening the file is not part of row 1
            encoding = "utf-8-sig" if number == 0 else "utf-8"
            try:
                texts = data.decode(encoding).split("\n")[:len(lines)]
            except UnicodeDecodeError:
                texts = None
            for k, raw in enumerate(lines):
                number += 1
                if texts is not None:
                    text = texts[k]
                else:
                    try:
                        text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                    except UnicodeDecodeError as exc:
                        yield None, f"not UTF-8 text (byte {exc.start})", number
                        continue
                if text.strip():
                    yield text.rstrip("\r\n"), None, number


_LINE_START = re.compile(r"\n([ \t,]*)([{\[])")


def _resync(text: str, start: int, column: int) -> int | None:
    """Returns where the element after a broken one starts: the next line whose first character
    is ``{`` or ``[`` at an indent ≤ the broken element's column and that parses, else None."""
    decoder = json.JSONDecoder()
    for match in _LINE_START.finditer(text, start):
        if match.start(2) - match.start() - 1 <= column:
            try:
                decoder.raw_decode(text, match.start(2))
                return match.start(2)
            except json.JSONDecodeError:
                continue
    return None


def _array_records(path: str) -> Iterator[tuple[str | None, str | None, int]]:
    """Yields ``(json text, error, line)`` per element of a JSON array file."""
    text = Path(path).read_bytes().decode("utf-8-sig")
    decoder = json.JSONDecoder()
    ws = " \t\r\n"
    pos, index, line, seen = text.index("[") + 1, 0, 1, 0

    def line_at(at: int) -> int:
        nonlocal line, seen
        line, seen = line + text.count("\n", seen, at), at
        return line

    while True:
        while pos < len(text) and text[pos] in ws:
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        start_line = line_at(pos)
        try:
            _, end = decoder.raw_decode(text, pos)
            after = end
            while after < len(text) and text[after] in ws:
                after += 1
            if after < len(text) and text[after] not in ",]":
                raise json.JSONDecodeError("Expecting ',' delimiter after this element",
                                           text, after)
        except json.JSONDecodeError as exc:
            column = pos - (text.rfind("\n", 0, pos) + 1)
            where = f"line {exc.lineno}, column {exc.colno}"
            nxt = _resync(text, pos, column)
            rest = "" if nxt is not None else "; no element after it could be found"
            yield None, (f"element {index} of the JSON array is not valid JSON "
                         f"({exc.msg} at {where}{rest})"), start_line
            if nxt is None:
                return
            pos, index = nxt, index + 1
            continue
        yield text[pos:end], None, start_line
        pos, index = (after + 1 if after < len(text) and text[after] == "," else after), index + 1


def _raw_features():
    import datasets

    return datasets.Features({RAW: datasets.Value("string"), ERROR: datasets.Value("string"),
                              LINE: datasets.Value("int64")})


def _records_dataset(path: Path, gen: Any, cache_dir: str | None):
    """Writes a JSON file's records to an Arrow file once per file version (path, size, mtime),
    published by an atomic rename, and returns it memory-mapped."""
    import datasets
    from datasets.arrow_writer import ArrowWriter

    stat = path.stat()
    version = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{gen.__name__}"
    folder = Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / "llmops_records"
    target = folder / f"{hashlib.sha256(version.encode()).hexdigest()[:24]}.arrow"
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.partial")
        try:
            with ArrowWriter(features=_raw_features(), path=str(partial)) as writer:
                records = gen(str(path))
                for chunk in iter(lambda: list(itertools.islice(records, BATCH)), []):
                    raw, error, line = zip(*chunk, strict=True)
                    writer.write_batch({RAW: list(raw), ERROR: list(error), LINE: list(line)})
                writer.finalize()
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    return datasets.Dataset.from_file(str(target))


def load_records(path: Path, cache_dir: str | None = None):
    """Loads one file's records as a Dataset: JSON texts for JSON files, else the file's columns.

    Raises:
        FormatError: If the file cannot be read (not UTF-8, not a JSON array, not Parquet/CSV).
    """
    import datasets

    try:
        if path.is_dir():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if "train" not in loaded:
                    raise FormatError(f"data.path: {path} holds splits {', '.join(loaded)} but "
                                      "no 'train'. Point at one split's folder.")
                loaded = loaded["train"]
            return loaded
        suffix = path.suffix.lower()
        if suffix in (".parquet", ".csv"):
            return datasets.load_dataset(suffix[1:], data_files=str(path), split="train",
                                         cache_dir=cache_dir)
        head = _head(path)
        if head in (b"", b"[]"):
            raise FormatError(f"data.path: {path} holds no rows. Fill it or point data.path at "
                              "another file.")
        gen = _array_records if suffix == ".json" and head.startswith(b"[") else _jsonl_records
        return _records_dataset(path, gen, cache_dir)
    except (UnicodeDecodeError, ValueError, OSError) as exc:
        raise FormatError(f"data.path: cannot read {path} ({type(exc).__name__}: {exc}). "
                          "Check that it is UTF-8 JSON Lines, a JSON array, Parquet or "
                          "CSV.") from exc


def _sample(records, n: int = DETECT_SAMPLE) -> list[tuple[int, Any]]:
    batch = records.select(range(min(n, len(records))))[:]
    return [(i + 1, row) for i, (row, _) in enumerate(source_rows(batch))]


def read_source(path_or_glob: str | Path, format: str = "auto", columns: dict | None = None,
                tags: dict | None = None, num_proc: int | None = None,
                cache_dir: str | None = None, prepare: Callable[[Converter], Any] | None = None):
    """Reads files into canonical rows and rejects (see the module docstring).

    Args:
        path_or_glob: A file, a save_to_disk folder or a glob pattern.
        format: ``"auto"`` (decided per file from its first rows) or one of ``convert.FORMATS``.
        columns: Source column names by canonical field (``convert.DEFAULT_COLUMNS`` keys).
        tags: ShareGPT key and role names (``convert.DEFAULT_TAGS`` keys).
        num_proc: Processes for parsing and conversion; None for one.
        cache_dir: Where datasets writes its Arrow files; None for its default cache.
        prepare: Given each file's converter, returns the batch function to map instead of
            the plain conversion (with its ``features``); the data stage's one pass
            (``pipeline.Prepare``) converts, checks and renders there. None: canonical rows.

    Returns:
        ``(rows, rejects)``, two ``datasets.Dataset``.

    Raises:
        FormatError: If nothing matches, a format or mapping is unknown, a file's format cannot
            be decided, or the files hold different kinds of rows.
    """
    import datasets

    parts, kinds = [], {}
    for path in expand(path_or_glob):
        records = load_records(path, cache_dir)
        fmt = format if format != "auto" else detect_format(
            _sample(records), str(path), *_mapping(columns, tags))
        convert = Converter(fmt, str(path), columns, tags)
        kinds.setdefault(convert.kind, path)
        if len(kinds) > 1:
            (k1, p1), (k2, p2) = kinds.items()
            raise FormatError(f"data.path: {p1} holds {k1} rows but {p2} holds {k2} rows. Read "
                              "them as separate sources.")
        batches = prepare(convert) if prepare else ArrowBatches(convert, features(convert.kind))
        parts.append(records.map(batches, batched=True, with_indices=True,
                                 remove_columns=records.column_names, num_proc=num_proc,
                                 features=batches.features, desc=f"convert {path.name}"))
    merged = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    return split_rejects(merged)


def _mapping(columns: dict | None, tags: dict | None) -> tuple[dict, dict]:
    probe = Converter("openai", "", columns, tags)
    return probe.cols, probe.tags
