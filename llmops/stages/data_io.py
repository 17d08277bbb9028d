"""The data stage's reading and writing: sources to canonical Datasets, tokenizer lengths, and
rows, rejects and duplicates out as JSON (``llmops.stages.data`` runs the pipeline)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from llmops.config.templates import AUTO, TINY, template_text
from llmops.core.context import StageContext
from llmops.data import formats, lengths, pages, pipeline, task_api
from llmops.errors import StageError
from llmops.stages.common import base_model_path

WINDOW, STEP = 20_000, 2_000  # lines written at once; of them, lines read per mapped step
_SENTENCE = re.compile(r"(?<=[.?!])\s+(?=[A-Z0-9'\"(])")


def specs(params: dict) -> list[tuple[str, dict[str, Any]]]:
    """Returns ``(name, spec)`` per source; a name is what ``meta.source`` says."""
    whole = {"weight": None, "samples": None}  # a single source is taken whole
    if params["source"] == "task_api":
        return [(task_api.SOURCE, {"format": "openai", "columns": {}, "tags": {}, **whole})]
    if params["source"] == "hf":
        return [("hf", {"format": params["format"], "columns": params["columns"],
                        "tags": params["tags"], **whole})]
    if params["source"] == "files":
        return [(s["path"], s) for s in params["sources"]]
    raise StageError(f"data.source: {params['source']!r} is not one of task_api, files, hf. Use "
                     "data=task_api, data=files data.path=FILE, or data=hf data.hf_id=NAME.")


def _records(texts: list[str]):
    """Returns a records Dataset (``__raw__`` JSON texts) as the readers write for JSON files."""
    import datasets

    from llmops.data.convert import ERROR, LINE, RAW

    return datasets.Dataset.from_dict(
        {RAW: texts, ERROR: [None] * len(texts), LINE: list(range(1, len(texts) + 1))},
        features=datasets.Features({RAW: datasets.Value("string"),
                                    ERROR: datasets.Value("string"),
                                    LINE: datasets.Value("int64")}))


def _convert(records, fmt: str, file: str, spec: dict[str, Any], num_proc: int | None,
             prepare: pipeline.Prepare):
    from llmops.data.convert import Converter, source_rows
    from llmops.data.detect import detect_format
    from llmops.data.prepare import split_rejects

    limits = prepare.limits
    convert = Converter("openai" if fmt == "auto" else fmt, file, spec["columns"], spec["tags"],
                        limits)
    if fmt == "auto":
        head = records.select(range(min(200, len(records))))[:]
        sample = [(i + 1, row) for i, (row, _) in enumerate(source_rows(head, limits))]
        convert = Converter(detect_format(sample, file, convert.cols, convert.tags), file,
                            spec["columns"], spec["tags"], limits)
    batches = prepare(convert)
    rows = records.map(batches, batched=True, with_indices=True,
                       remove_columns=records.column_names, num_proc=num_proc,
                       features=batches.features, desc=f"convert {Path(file).name}")
    return split_rejects(rows)


#: data.num_proc=null: one process below this many bytes of input (workers cost ~1 s to start),
#: else one worker per core (at most 4): 1M chat rows are ~1 GB.
AUTO_PROCS_BYTES = 64 << 20


def auto_procs(paths: list[Path]) -> int | None:
    """Returns the worker count for data.num_proc=null: None (one process) for small inputs or one
    core, else the cores this process may use (at most 4)."""
    import os

    size = sum(f.stat().st_size for p in paths
               for f in (p.rglob("*") if p.is_dir() else [p]) if f.is_file())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return None if size < AUTO_PROCS_BYTES or (cores or 1) < 2 else min(4, cores)


def read(name: str, spec: dict[str, Any], params: dict, cache: str, prepare: pipeline.Prepare,
         warn: Any = None):
    """Reads one source through ``prepare``'s pass: ``(its clean rows, meta + reject of the
    rest)``, the rows' columns as ``pipeline`` describes (``prepare.kind`` says their kind).
    ``warn`` is called once when a glob matches more than ``limits.glob_files_warn`` files.

    Raises:
        FormatError: If the source's files or format cannot be understood.
        StageError: If task_api's arguments are out of range or the hub dataset cannot load.
    """
    num_proc = params["num_proc"]
    if name == task_api.SOURCE:
        try:
            generated = task_api.generate(params["n_examples"], params["seed"])
        except ValueError as exc:  # task_api.generate's argument checks
            raise StageError(f"data: {exc} Check data.n_examples.") from exc
        if params["system_prompt"]:
            for row in generated:
                row["messages"][0]["content"] = params["system_prompt"]
        texts = [json.dumps(row, ensure_ascii=False) for row in generated]
        return _convert(_records(texts), "openai", task_api.SOURCE, spec, num_proc, prepare)
    if name == "hf":
        return _convert(_hub(params, cache), spec["format"],
                        f"{params['hf_id']}[{params['hf_split']}]", spec, num_proc, prepare)
    from llmops.data.readers import read_source

    try:  # the config rules checked this; the files may have changed since (or a FIFO appeared)
        paths = formats.input_paths(spec["path"], "data.path")
    except ValueError as exc:
        raise StageError(str(exc)) from exc
    if num_proc is None:
        num_proc = auto_procs(paths)
    return read_source(spec["path"], spec["format"], spec["columns"], spec["tags"],
                       num_proc=num_proc, cache_dir=cache, prepare=prepare,
                       limits=prepare.limits, warn=warn)


def _hub(params: dict, cache: str):
    import datasets

    hf_id, split = params["hf_id"], params["hf_split"]
    try:
        return datasets.load_dataset(hf_id, split=split)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types; report them all the same
        raise StageError(
            f"data.hf_id: cannot load {hf_id!r} split {split!r} ({type(exc).__name__}: {exc}). "
            "Check the name, data.hf_split, and that the hub can be reached."
        ) from exc


def token_counter(params: dict, inputs: dict[str, Path], ctx: StageContext) -> tuple[Any, dict]:
    """Returns the batch function that counts tokens and what the report says about it.

    The tokenizer is loaded with ``local_files_only`` (no network, no retries): the tiny
    model's from the base stage's folder, a local model folder given as ``model.hub_id`` from
    that folder, a hub id from the local hub cache. The report's ``loaded`` says which, with the
    tokenizer's class and vocabulary size, and the log says it once. When none loads, lengths
    are estimated (``lengths.estimate``), the report says why, and over-long rows are flagged,
    not rejected.
    """
    name, loaded = None, {"from": "local hub cache", "local_files_only": True}
    try:
        name = base_model_path(params, inputs)
        folder = Path(name)
        if folder.is_dir():
            loaded["from"] = "local folder"
        if (folder / "tokenizer.json").is_file():
            # The generic fast class loads a local folder without AutoTokenizer's torch import.
            from transformers import PreTrainedTokenizerFast

            tok = PreTrainedTokenizerFast.from_pretrained(name, local_files_only=True)
        else:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(
                name, local_files_only=True,
                trust_remote_code=bool(params["model"]["trust_remote_code"]))
    except Exception as exc:  # noqa: BLE001 - lengths are then estimated; the reason is reported
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if name is not None and loaded["from"] == "local hub cache":
            why = f"{name} is not in the local hub cache ({why})"
        ctx.logger.warning("data: no tokenizer for %s could be loaded offline (%s); token lengths "
                           "are estimated at %d characters a token", name, why,
                           lengths.CHARS_PER_TOKEN)
        return lengths.estimate, {
            "tokenizer": name, "method": "estimated",
            **({"loaded": loaded} if name is not None else {}),
            "note": f"no tokenizer could be loaded offline ({why}); lengths are estimated at "
                    f"about {lengths.CHARS_PER_TOKEN} characters a token, and rows over "
                    "max_length are listed here, not rejected.",
        }
    chosen = params["model"]["chat_template"]
    if chosen not in (AUTO, TINY):  # a TRL family or a .jinja file: what sft renders with
        tok.chat_template = template_text(chosen, None)
    method = "chat_template" if getattr(tok, "chat_template", None) else "plain_text"
    loaded.update({"class": type(tok).__name__, "vocab_size": len(tok)})
    ctx.logger.info("data: token lengths in %s's tokens (%s, %d tokens, from the %s, "
                    "local_files_only), %s", name, loaded["class"], loaded["vocab_size"],
                    loaded["from"], "through its chat template" if method == "chat_template"
                    else "as plain text (it has no chat template)")
    seconds = params["limits"]["template_seconds"]
    return lengths.TokenCounter(tok, seconds), {"tokenizer": name, "method": method,
                                                "loaded": loaded}


def token_stats(ann, positions: np.ndarray, max_length: int, info: dict, rows,
                limit: int) -> dict[str, Any]:
    """Returns the token-length section of the report over the given rows."""
    counts = ann[lengths.TOKENS].to_numpy()[positions]
    out = dict(info)
    if counts.size == 0:
        return {**out, "count": 0}
    ordered = np.sort(counts)

    def pct(q: int) -> int:  # nearest rank
        return int(ordered[max(0, math.ceil(ordered.size * q / 100) - 1)])

    over = positions[counts > max_length]
    out.update(count=int(counts.size), min=int(ordered[0]), mean=round(float(counts.mean()), 2),
               p50=pct(50), p95=pct(95), max=int(ordered[-1]), max_length=max_length,
               over_max_length=int(over.size))
    if info["method"] == "estimated":
        metas = rows.select(over[:limit])["meta"] if over.size else []
        out["over_max_length_rows"] = [
            {"file": m["file"], "line": m["line"], "row": m["row"], "tokens": int(n)}
            for m, n in zip(metas, counts[counts > max_length][:limit], strict=False)]
    return out


def gather(rows, names: list[str], positions: np.ndarray | None = None):
    """Returns the named columns of a Dataset (at ``positions``, else all rows) as a
    ``pyarrow.Table``, taken chunk by chunk (``take_chunked``): datasets' own indexing of an
    index-mapped Dataset builds one slice per row, which at a million rows costs gigabytes.
    """
    import pyarrow as pa

    table = rows.data.table.select(names)
    mapping = rows._indices  # noqa: SLF001 - datasets has no public accessor for its mapping
    order = mapping.column(0).to_numpy() if mapping is not None else None
    if positions is not None:
        order = positions if order is None else order[positions]
    if order is None:
        return table
    return pa.table({n: take_chunked(table.column(n), order) for n in names})


def take_chunked(column, order: np.ndarray):
    """Returns ``column[order]`` for a ``pyarrow.ChunkedArray``, taking from each chunk only
    what it holds (Arrow's ``take`` on a chunked array first concatenates every chunk: the
    whole column copied for each call)."""
    import pyarrow as pa

    order = np.asarray(order, dtype=np.int64)
    if order.size == 0:
        return pa.array([], type=column.type)
    offsets = np.cumsum([0, *(len(c) for c in column.chunks)])
    chunk_of = np.searchsorted(offsets, order, side="right") - 1
    by_chunk = np.argsort(chunk_of, kind="stable")
    ids, starts = np.unique(chunk_of[by_chunk], return_index=True)
    ends = [*starts[1:], order.size]
    parts = [column.chunk(int(c)).take(pa.array(order[by_chunk[a:b]] - offsets[c]))
             for c, a, b in zip(ids, starts, ends, strict=True)]
    grouped = pa.concat_arrays(parts)
    inverse = np.empty_like(by_chunk)
    inverse[by_chunk] = np.arange(by_chunk.size)
    return grouped.take(pa.array(inverse))


def write_rows(path: Path, rows, positions: np.ndarray, column: str = pipeline.LINE,
               keep: bool = False) -> list[dict] | None:
    """Writes the rendered rows at ``positions`` (``pipeline``'s ``_line`` or ``_pair``), one
    JSON line each, ``WINDOW`` lines at a time (only those are in memory).

    The positions are shuffled, and each page fault on the mapped column maps in its
    neighbours too (64 KB), so picking a window's lines in output order would map in the whole
    column; they are picked in file order, ``STEP`` at a time, each step's mapped pages released
    (``pages``), then put back in output order.

    Args:
        keep: Also return the written rows as dicts (for deriving preference pairs).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    kept: list[dict] | None = [] if keep else None
    table = rows.data.table.column(column)
    mapping = rows._indices  # noqa: SLF001 - datasets has no public accessor for its mapping
    places = positions if mapping is None else mapping.column(0).to_numpy()[positions]
    with open(path, "wb") as f:
        for start in range(0, places.size, WINDOW):
            window = places[start:start + WINDOW]
            by_place = np.argsort(window, kind="stable")
            parts = []
            for a in range(0, window.size, STEP):
                parts.append(take_chunked(table, window[by_place[a:a + STEP]]))
                pages.release()
            inverse = np.empty_like(by_place)
            inverse[by_place] = np.arange(by_place.size)
            texts = pa.concat_arrays(parts).take(pa.array(inverse))
            # Each text + "\n", as one UTF-8 buffer: no Python string per row.
            lines = pc.binary_join_element_wise(texts, pa.scalar(""), "\n")
            offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[
                lines.offset:lines.offset + len(lines) + 1]
            f.write(memoryview(lines.buffers()[2])[offsets[0]:offsets[-1]])
            if kept is not None:
                kept += [json.loads(t) for t in texts.to_pylist()]
    return kept


def duplicates(rows, positions: np.ndarray, first: np.ndarray) -> list[dict[str, Any]]:
    """Lists duplicate rows with where their first occurrence is."""
    if positions.size == 0:
        return []
    metas = rows.select(positions)["meta"]
    originals = rows.select(first[positions])["meta"]
    return [{"file": m["file"], "line": m["line"], "row": m["row"],
             "duplicate_of": {"file": o["file"], "line": o["line"], "row": o["row"]}}
            for m, o in zip(metas, originals, strict=True)]


def fix_of(message: str) -> str:
    """Returns the fix a reject message ends with: its last sentence (the checks write the
    problem first and the fix last)."""
    return _SENTENCE.split(message.strip())[-1]


def reject_entries(rejects, source: str, limit: int) -> list[dict[str, Any]]:
    """Returns up to ``limit`` rejects of one source, in file order, as report entries."""
    import pyarrow.compute as pc

    if not len(rejects) or limit <= 0:
        return []
    meta = rejects.select_columns(["meta"]).with_format("arrow")[:]["meta"]
    order = pc.sort_indices(pc.struct_field(meta, "row")).to_numpy().astype(np.int64)[:limit]
    picked = rejects.select(order)[:]
    return [{"source": source, "file": m["file"], "line": m["line"], "row": m["row"],
             "code": r["code"], "path": r["path"], "message": r["message"],
             "fix": fix_of(r["message"])}
            for m, r in zip(picked["meta"], picked["reject"], strict=True)]


#: Unused columns and message keys whose name says they may change what a row teaches.
MEANINGFUL = re.compile(r"label|kto|score|weight|reward|rating|rank|prefer|chosen|rejected|"
                        r"image|audio|video|quality|safe|toxic|correct", re.IGNORECASE)


def label_codes(column) -> np.ndarray:
    """Returns a row label column (``pyarrow`` bools with nulls) as int8: 1 desirable, 0
    undesirable, -1 unlabelled."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = column if isinstance(column, pa.ChunkedArray) else pa.chunked_array([column])
    codes = pc.if_else(column, 1, 0).cast(pa.int8())
    return pc.fill_null(codes, -1).to_numpy().astype(np.int8)


def label_counts(codes: np.ndarray, chosen: np.ndarray, splits: dict[str, np.ndarray]
                 ) -> dict[str, Any]:
    """Returns the report's ``labels``: rows labelled desirable, undesirable and unlabelled,
    over the chosen rows and per split, and how many train rows sft leaves out."""

    def count(idx: np.ndarray) -> dict[str, int]:
        c = codes[idx]
        return {"desirable": int((c == 1).sum()), "undesirable": int((c == 0).sum()),
                "unlabelled": int((c == -1).sum())}

    return {**count(chosen), "by_split": {n: count(i) for n, i in splits.items()},
            "sft_leaves_out": int((codes[splits["train"]] == 0).sum())}


def say_labels(labels: dict[str, Any], logger: Any) -> None:
    """Logs what the labels do, when rows carry any."""
    if labels["undesirable"] or labels["desirable"]:
        logger.warning(
            "data: %d rows labelled desirable, %d undesirable (label/kto_tag false), %d "
            "unlabelled. The undesirable ones are in train.jsonl with \"label\": false for KTO "
            "(train.method=kto trains on both); sft leaves those %d out, and val/test hold none.",
            labels["desirable"], labels["undesirable"], labels["unlabelled"],
            labels["sft_leaves_out"])


def reasoning_counts(rows, chosen: np.ndarray, splits: dict[str, np.ndarray]
                     ) -> dict[str, Any]:
    """Returns the report's ``reasoning``: rows with a reasoning trace and the traces (assistant
    messages with ``reasoning_content``), over the chosen rows and per split."""
    turns = gather(rows, [pipeline.REASONING])[pipeline.REASONING].to_numpy(
        zero_copy_only=False)
    turns = np.nan_to_num(turns.astype(np.float64)).astype(np.int64)

    def count(idx: np.ndarray) -> dict[str, int]:
        return {"rows": int((turns[idx] > 0).sum()), "traces": int(turns[idx].sum())}

    return {**count(chosen), "by_split": {n: count(i) for n, i in splits.items()}}


def unused(rows, limit: int = 50) -> list[dict[str, Any]]:
    """Returns the report's ``unused``: each column or message key the reader did not use, with
    the valid rows that carry it and a first value (``convert.UNUSED``), most common first."""
    import pyarrow.compute as pc

    from llmops.data.convert import UNUSED, UNUSED_EXAMPLE

    table = gather(rows, [UNUSED, UNUSED_EXAMPLE])
    names = pc.list_flatten(table.column(UNUSED))
    if len(names) == 0:
        return []
    counts = sorted(((d["values"], d["counts"]) for d in pc.value_counts(names).to_pylist()),
                    key=lambda x: (-x[1], x[0]))[:limit]
    examples: dict[str, Any] = {}
    texts = table.column(UNUSED_EXAMPLE).drop_null()
    for text in texts.to_pylist():
        for name, value in json.loads(text).items():
            examples.setdefault(name, value)
        if len(examples) >= len(counts):
            break
    return [{"name": n, "count": int(k), "example": examples.get(n),
             "meaningful": bool(MEANINGFUL.search(n.rsplit(".", 1)[-1]))} for n, k in counts]


def say_unused(listed: list[dict[str, Any]], logger: Any) -> None:
    """Warns about unused columns whose name says they matter (a label, a score, images)."""
    shown = [u for u in listed if u["meaningful"]]
    if shown:
        logger.warning(
            "data: the reader did not use %s; they do not change training. Map them (e.g. "
            "data.columns.label=COLUMN for a desirable/undesirable label, data.format=preference "
            "for chosen/rejected) or drop them; all unused keys are listed in data_report.json "
            "\"unused\".", ", ".join(f"{u['name']!r} ({u['count']} rows)" for u in shown))


def code_rows(rejects, code: str) -> np.ndarray:
    """Returns the positions of the rejects with the given reason code."""
    import pyarrow.compute as pc

    if not len(rejects):
        return np.zeros(0, dtype=np.int64)
    column = rejects.select_columns(["reject"]).with_format("arrow")[:]["reject"]
    hit = pc.equal(pc.struct_field(column, "code"), code)
    return np.flatnonzero(pc.fill_null(hit, False).to_numpy(zero_copy_only=False))


def demo_model_note(params: dict, inputs: dict[str, Path], info: dict) -> str | None:
    """Returns what to tell a user who runs the tiny demo model on their own rows (None for the
    bundled Task-API rows or another model)."""
    if params["source"] == "task_api" or "base" not in inputs:
        return None
    size = (info.get("loaded") or {}).get("vocab_size", "its")
    return (f"model=tiny is llmops's demo model: its {size}-token vocabulary was made from the "
            "bundled Task-API text, so other text splits into many short tokens and most real "
            f"rows will be longer than its {params['max_length']}-token data.max_length "
            "(rejected as too_long). For your own data name a real model: model=hub "
            "model.hub_id=ORG/NAME (or a local model folder), or a preset such as "
            "model=qwen0.5b.")
