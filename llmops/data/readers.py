"""Reads a user's data files into a ``datasets.Dataset`` of canonical rows, and their rejects.

Contract, for the data stage:

    rows, rejects = read_source(path_or_glob, format="auto", columns=None, tags=None)

- ``path_or_glob``: a file (``.jsonl``; ``.json`` holding an array, or JSON Lines under that
  name; ``.parquet``; ``.csv``), a folder written by ``Dataset.save_to_disk``, or a glob pattern
  (``data/*.jsonl``, ``**`` allowed) over such files. A JSON file may be compressed
  (``.jsonl.gz``, ``.json.bz2``, ``.jsonl.xz``, or such content under any JSON name: told by its
  first bytes, as ``datasets`` reads them); the JSON files of one source are read in one pass
  (one Arrow file, one ``Dataset.map``), however many a glob matches. Every file of one source
  must convert to the same kind of row (chat, preference or text); formats may differ per file
  with ``auto``.
- ``rows``: the canonical columns of that kind (``canonical.COLUMNS`` less ``reject``), with
  ``meta`` naming each row's file, line and record number, Arrow-backed (memory-mapped from
  ``cache_dir``, or datasets' cache) so nothing holds all rows in Python.
- ``rejects``: ``meta`` and ``reject`` (``{"code", "path", "message"}``) of each record that could
  not be read or converted: a line that is not JSON or UTF-8, a broken element of a JSON array
  (its index and line), a row that does not fit its format. ``prepare.count_rejects`` counts
  them by code.

JSON and JSON Lines are cut into records here (one JSON text per record, with its line), so a
broken record rejects only itself; a line longer than ``limits.row_bytes`` is rejected
(``row_too_large``) without ever being held whole, and a record nested deeper than
``limits.json_depth`` (``too_deep``) is never parsed; parsing and conversion run in
``Dataset.map`` (``num_proc``).
Other files load with ``datasets`` and keep their columns. ``datasets`` is imported inside the
functions. Checks of tool calls, order and length are ``toolcheck``'s, run after this.
"""

from __future__ import annotations

import bz2
import functools
import glob
import gzip
import hashlib
import itertools
import json
import lzma
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from llmops.data.canonical import features
from llmops.data.convert import (
    ERROR,
    FILE,
    LINE,
    RAW,
    Converter,
    FormatError,
    reader_error,
    source_rows,
)
from llmops.data.detect import detect_format
from llmops.data.limits import Limits
from llmops.data.prepare import ArrowBatches, split_rejects

SUFFIXES: tuple[str, ...] = (".jsonl", ".json", ".parquet", ".csv")
#: Compressions a JSON file may be in, by its first bytes: (name, suffix, opener).
COMPRESSIONS: tuple[tuple[bytes, str, str, Callable[..., IO[bytes]]], ...] = (
    (b"\x1f\x8b", "gzip", ".gz", gzip.open), (b"BZh", "bzip2", ".bz2", bz2.open),
    (b"\xfd7zXZ\x00", "xz", ".xz", lzma.open),
)
#: Compressions told by their first bytes that Python cannot read: what to do instead.
UNREADABLE = ((b"\x28\xb5\x2f\xfd", "zstd", "zstd -d"), (b"PK\x03\x04", "zip", "unzip"))
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
        if p.is_file() and data_suffix(p) not in SUFFIXES:
            raise FormatError(f"data.path: {p} has suffix {p.suffix!r}; allowed: "
                              f"{', '.join(SUFFIXES)} (.jsonl and .json also compressed: "
                              f"{', '.join(c[2] for c in COMPRESSIONS)}) or a save_to_disk "
                              "folder. Rename or convert it.")
    return paths


def data_suffix(path: Path) -> str:
    """Returns a data file's format suffix, a compression suffix after a JSON one left out
    (``rows.jsonl.gz`` -> ``.jsonl``)."""
    suffix = path.suffix.lower()
    inner = Path(path.stem).suffix.lower()
    if suffix in {c[2] for c in COMPRESSIONS} and inner in (".jsonl", ".json"):
        return inner
    return suffix


def open_data(path: str | Path) -> IO[bytes]:
    """Opens a JSON data file for reading bytes, decompressing it when its first bytes say it is
    gzip, bzip2 or xz (whatever its name).

    Raises:
        FormatError: If it is compressed in a way Python cannot read (zstd, zip), naming the fix.
    """
    with open(path, "rb") as f:
        magic = f.read(6)
    for head, _, _, opener in COMPRESSIONS:
        if magic.startswith(head):
            return opener(path, "rb")
    for head, name, command in UNREADABLE:
        if magic.startswith(head):
            raise FormatError(f"data.path: {path} is {name}-compressed, which llmops cannot read. "
                              f"Decompress it ({command} {Path(path).name}), or compress it "
                              "with gzip instead.")
    return open(path, "rb")  # noqa: SIM115 - the caller closes it


def _head(path: Path, size: int = 1 << 16) -> bytes:
    """Returns the file's first bytes without a BOM and whitespace (all of it when small),
    decompressed."""
    with open_data(path) as f:
        head = f.read(size).removeprefix(b"\xef\xbb\xbf")
    return b"".join(head.split()) if len(head) < size else head.lstrip()


def _jsonl_records(path: str, row_bytes: int) -> Iterator[tuple[str | None, str | None, int]]:
    """Yields ``(json text, error, line)`` per non-blank line.

    The file is read and decoded in blocks of whole lines (one ``decode`` per block); only a
    block that is not UTF-8 is decoded line by line, to name the line and byte that is not. A
    line longer than ``row_bytes`` is rejected and skipped without being held whole: at most
    ``row_bytes`` + one block is in memory, however long a line is.
    """
    number = 0
    too_long = reader_error("row_too_large", f"is longer than limits.row_bytes={row_bytes} "
                            "bytes; it is not parsed. Split or shorten the row, or raise "
                            "limits.row_bytes.")
    with open_data(path) as handle:
        rest, skipping = b"", False
        while True:
            block = handle.read(BLOCK)
            if skipping:  # inside a line already rejected: drop bytes up to its end
                if not block:
                    return
                cut = block.find(b"\n")
                if cut < 0:
                    continue
                block, skipping = block[cut + 1:], False
                if not block:
                    continue
            if block and len(rest) + len(block) > row_bytes and b"\n" not in block:
                number += 1  # the line so far is already too long: never join it
                yield None, too_long, number
                rest, skipping = b"", True
                continue
            data = rest + block
            cut = data.rfind(b"\n") + 1 if block else len(data)
            data, rest = data[:cut], data[cut:]
            if len(rest) > row_bytes:  # a line with no end in sight is already too long
                skipping, rest = True, b""
            if not data and not skipping:
                if not block:
                    return
                continue
            lines = data.split(b"\n") if data else []
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
                if len(raw) > row_bytes:
                    yield None, too_long, number
                    continue
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
            if skipping:
                number += 1
                yield None, too_long, number


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
            except (json.JSONDecodeError, RecursionError):
                continue
    return None


def _array_records(path: str, row_bytes: int) -> Iterator[tuple[str | None, str | None, int]]:
    """Yields ``(json text, error, line)`` per element of a JSON array file; an element longer
    than ``row_bytes`` (characters, a lower bound of its bytes) is a coded error, not a record,
    and one nested too deep for Python's parser is an error like a broken element."""
    with open_data(path) as f:
        text = f.read().decode("utf-8-sig")
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
        except (json.JSONDecodeError, RecursionError) as exc:
            column = pos - (text.rfind("\n", 0, pos) + 1)
            nxt = _resync(text, pos, column)
            rest = "" if nxt is not None else "; no element after it could be found"
            if isinstance(exc, RecursionError):
                yield None, reader_error("too_deep", f"element {index} of the JSON array is "
                                         "nested too deep for Python's JSON parser; it is not "
                                         f"converted{rest}. Flatten it."), start_line
            else:
                where = f"line {exc.lineno}, column {exc.colno}"
                yield None, (f"element {index} of the JSON array is not valid JSON "
                             f"({exc.msg} at {where}{rest})"), start_line
            if nxt is None:
                return
            pos, index = nxt, index + 1
            continue
        if end - pos > row_bytes:
            yield None, reader_error("row_too_large", f"element {index} of the JSON array is "
                                     f"longer than limits.row_bytes={row_bytes} bytes; it is not "
                                     "converted. Shorten it, or raise limits.row_bytes."), \
                start_line
        else:
            yield text[pos:end], None, start_line
        pos, index = (after + 1 if after < len(text) and text[after] == "," else after), index + 1


def _take(records: Iterator[Any]) -> list[Any]:
    return list(itertools.islice(records, BATCH))


def _raw_features():
    import datasets

    return datasets.Features({RAW: datasets.Value("string"), ERROR: datasets.Value("string"),
                              LINE: datasets.Value("int64"), FILE: datasets.Value("int32")})


def is_json_text(path: Path) -> bool:
    """Tells whether a path is a JSON or JSON Lines file (compressed or not), which the readers
    cut into records themselves."""
    return path.is_file() and data_suffix(path) in (".jsonl", ".json")


def _generator(path: Path) -> Callable[[str, int], Iterator[tuple[str | None, str | None, int]]]:
    head = _head(path)
    if head in (b"", b"[]"):
        raise FormatError(f"data.path: {path} holds no rows. Fill it or point data.path at "
                          "another file.")
    return _array_records if data_suffix(path) == ".json" and head.startswith(b"[") else \
        _jsonl_records


class JsonFiles:
    """The records of several JSON / JSON Lines files, written to one Arrow file in one pass.

    Attributes:
        records: The Dataset (``__raw__``, ``__error__``, ``__line__``, ``__file__``: the
            record's index into ``files``), memory-mapped.
        files: The files, as strings, in order.
        spans: Per file, ``(first record, end)`` in ``records``.
        formats: Per file, the format ``detect`` gave from its first records parsed
            (``(record number, value)`` pairs; only these are held, one file at a time).
    """

    def __init__(self, paths: list[Path], cache_dir: str | None, limits: Limits,
                 detect: Callable[[list[tuple[int, Any]], str], str]):
        import datasets
        from datasets.arrow_writer import ArrowWriter

        self.files = [str(p) for p in paths]
        self.spans: list[tuple[int, int]] = []
        self.formats: list[str] = []
        gens = [_generator(p) for p in paths]
        versions = "\n".join(f"{p.resolve()}|{p.stat().st_size}|{p.stat().st_mtime_ns}|"
                              f"{g.__name__}" for p, g in zip(paths, gens, strict=True))
        versions += f"\n{limits.row_bytes}"
        folder = Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / "llmops_records"
        target = folder / f"{hashlib.sha256(versions.encode()).hexdigest()[:24]}.arrow"
        folder.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.partial")
        total = 0
        try:
            with ArrowWriter(features=_raw_features(), path=str(partial)) as writer:
                for k, (path, gen) in enumerate(zip(paths, gens, strict=True)):
                    first, sample = total, []
                    records = gen(str(path), limits.row_bytes)
                    for chunk in iter(functools.partial(_take, records), []):
                        raw, error, line = zip(*chunk, strict=True)
                        if len(sample) < DETECT_SAMPLE:
                            head = {RAW: list(raw[:DETECT_SAMPLE - len(sample)]),
                                    ERROR: list(error[:DETECT_SAMPLE - len(sample)])}
                            sample += [(len(sample) + i + 1, row) for i, (row, _) in
                                       enumerate(source_rows(head, limits))]
                        writer.write_batch({RAW: list(raw), ERROR: list(error),
                                            LINE: list(line), FILE: [k] * len(raw)})
                        total += len(raw)
                    self.spans.append((first, total))
                    self.formats.append(detect(sample, str(path)))
                writer.finalize()
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        self.records = datasets.Dataset.from_file(str(target))


def load_records(path: Path, cache_dir: str | None = None):
    """Loads one file's records as a Dataset: the file's columns (Parquet, CSV, a save_to_disk
    folder); JSON files are read by ``JsonFiles``.

    Raises:
        FormatError: If the file cannot be read (not Parquet/CSV, a folder without 'train').
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
        return datasets.load_dataset(suffix[1:], data_files=str(path), split="train",
                                     cache_dir=cache_dir)
    except (UnicodeDecodeError, ValueError, OSError) as exc:
        raise FormatError(f"data.path: cannot read {path} ({type(exc).__name__}: {exc}). "
                          "Check that it is UTF-8 JSON Lines, a JSON array, Parquet or "
                          "CSV.") from exc


def _json_files(paths: list[Path], cache_dir: str | None, limits: Limits,
                detect: Callable[[list[tuple[int, Any]], str], str]) -> JsonFiles:
    try:
        return JsonFiles(paths, cache_dir, limits, detect)
    except (UnicodeDecodeError, ValueError, OSError, EOFError) as exc:  # EOFError: cut gzip
        where = getattr(exc, "filename", None) or (paths[0] if len(paths) == 1 else
                                                   f"one of {len(paths)} files")
        raise FormatError(f"data.path: cannot read {where} ({type(exc).__name__}: {exc}). "
                          "Check that it is UTF-8 JSON Lines or a JSON array (gzip, bzip2 or "
                          "xz compressed or not).") from exc


def _sample(records, n: int = DETECT_SAMPLE, limits: Limits | None = None
            ) -> list[tuple[int, Any]]:
    batch = records.select(range(min(n, len(records))))[:]
    return [(i + 1, row) for i, (row, _) in enumerate(source_rows(batch, limits))]


def read_source(path_or_glob: str | Path, format: str = "auto", columns: dict | None = None,
                tags: dict | None = None, num_proc: int | None = None,
                cache_dir: str | None = None, prepare: Callable[[Converter], Any] | None = None,
                limits: Limits | None = None, warn: Callable[[str], None] | None = None):
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
        limits: The bounds on rows (``limits.*``); None: the largest the schema allows.
        warn: Called once with a message when a glob matches more than
            ``limits.glob_files_warn`` files; None to say nothing.

    Returns:
        ``(rows, rejects)``, two ``datasets.Dataset``.

    Raises:
        FormatError: If nothing matches, a format or mapping is unknown, a file's format cannot
            be decided, or the files hold different kinds of rows.
    """
    import datasets

    limits = limits or UNBOUNDED
    paths = expand(path_or_glob)
    if warn is not None and len(paths) > limits.glob_files_warn:
        warn(f"data.path: {path_or_glob} matches {len(paths)} files, more than "
             f"limits.glob_files_warn={limits.glob_files_warn}; they are read in one pass, "
             "but consider merging them into fewer files.")
    parts, kinds = [], {}

    def convert(records, fmt: str, file: str, files: list[str] | None = None,
                starts: list[int] | None = None) -> None:
        conv = Converter(fmt, file, columns, tags, limits, files, starts)
        kinds.setdefault(conv.kind, file)
        if len(kinds) > 1:
            (k1, p1), (k2, p2) = kinds.items()
            raise FormatError(f"data.path: {p1} holds {k1} rows but {p2} holds {k2} rows. Read "
                              "them as separate sources.")
        batches = prepare(conv) if prepare else ArrowBatches(conv, features(conv.kind))
        name = Path(file).name + (f" and {len(files) - 1} more" if files and len(files) > 1
                                  else "")
        parts.append(records.map(batches, batched=True, with_indices=True,
                                 remove_columns=records.column_names, num_proc=num_proc,
                                 features=batches.features, desc=f"convert {name}"))

    cols, tag_names = _mapping(columns, tags)
    for is_json, group in itertools.groupby(paths, key=is_json_text):
        group = list(group)
        if not is_json:
            for path in group:
                records = load_records(path, cache_dir)
                fmt = format if format != "auto" else detect_format(
                    _sample(records, limits=limits), str(path), cols, tag_names)
                convert(records, fmt, str(path))
            continue
        read = _json_files(group, cache_dir, limits, lambda sample, file: format if format != (
            "auto") else detect_format(sample, file, cols, tag_names))
        fmts = read.formats
        # Files in a row that share a format are converted by one map over their records.
        for fmt, run in itertools.groupby(range(len(fmts)), key=fmts.__getitem__):
            run = list(run)
            start, end = read.spans[run[0]][0], read.spans[run[-1]][1]
            if start == end:
                continue
            records = read.records if (start, end) == (0, len(read.records)) else \
                read.records.select(range(start, end))
            convert(records, fmt, read.files[run[0]], read.files,
                    [first - start for first, _ in read.spans])
    if not parts:
        raise FormatError(f"data.path: {path_or_glob} holds no rows. Fill it or point data.path "
                          "at another file.")
    merged = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    return split_rejects(merged)


def _mapping(columns: dict | None, tags: dict | None) -> tuple[dict, dict]:
    probe = Converter("openai", "", columns, tags)
    return probe.cols, probe.tags


#: No bound but what the config schema itself allows (for library callers that pass none).
UNBOUNDED = Limits(row_bytes=2**31, json_depth=10_000, pattern_seconds=3600.0,
                   template_seconds=3600.0, glob_files_warn=100_000_000)
