"""The data stage: load rows, check them, drop duplicates, split, measure, and write the hand-off.

Sources (``params["source"]``):
- ``task_api``: the bundled generator, ``n_examples`` rows from ``seed``.
- ``jsonl``: the user's file at ``path``, format ``auto`` or declared (see ``llmops.data.formats``).
- ``hf``: ``datasets.load_dataset(hf_id, split=hf_split)``, checked like a file (rows from 1).

Writes train.jsonl, val.jsonl, test.jsonl (chat form, see CONTRACT.md) and data_report.json.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from llmops.backends.common import base_model_path, write_json, write_jsonl
from llmops.compiler.plan import report_name
from llmops.data import formats, task_api
from llmops.errors import StageError
from llmops.runner.context import StageContext

REPORT_NAME = report_name("data")
MAX_LISTED = 200


def run(params: dict, inputs: dict[str, Path], out_dir: Path, ctx: StageContext) -> dict:
    """Prepares the dataset and writes the split files and data_report.json into ``out_dir``.

    Args:
        params: The data params (PARAMS.md): source, path, format, hf_id, hf_split, system_prompt,
            n_examples (task_api only), val_fraction, test_fraction, seed, dedup, max_length, model.
        inputs: ``{"base": Path}`` for the tiny model (its tokenizer measures lengths), else empty.
        out_dir: The empty folder to write into.
        ctx: The run context (logger).

    Returns:
        The report, as written to data_report.json.

    Raises:
        StageError: When the source cannot be read, its format cannot be decided, no valid row is
            left, or too few rows remain to split.
    """
    out_dir = Path(out_dir)
    source = params.get("source", "task_api")
    loaded, origin = _load(params, source)
    if not loaded.rows:
        first = "; ".join(f"line {r.line}: {r.reason}" for r in loaded.rejects[:3])
        raise StageError(
            f"data: no valid rows in {origin} ({loaded.n_read} read, {len(loaded.rejects)} "
            f"rejected{': ' + first if first else ''}). Fix the rows or point data at other data."
        )
    for row in loaded.rows:
        _annotate(row)

    rows, duplicates = _dedup(loaded.rows) if params.get("dedup", True) else (loaded.rows, [])
    seed = int(params.get("seed", 0))
    splits = split_rows(
        rows, float(params.get("val_fraction", 0.1)), float(params.get("test_fraction", 0.1)), seed
    )
    for name, part in splits.items():
        write_jsonl(out_dir / f"{name}.jsonl", part)

    report = {
        "source": source,
        "origin": origin,
        "format": loaded.format,
        "seed": seed,
        "input_sha256": _sha256(Path(origin)) if source == "jsonl" else None,
        "counts": {
            "read": loaded.n_read,
            "valid": len(loaded.rows),
            "rejected": len(loaded.rejects),
            "duplicates": len(duplicates),
            **{name: len(part) for name, part in splits.items()},
        },
        "rejects": [r.to_dict() for r in loaded.rejects[:MAX_LISTED]],
        "duplicate_lines": duplicates[:MAX_LISTED],
        "tool_distribution": {
            "all": _tools(rows),
            **{name: _tools(part) for name, part in splits.items()},
        },
        "token_lengths": token_stats(rows, params, inputs, ctx),
        "files": [f"{name}.jsonl" for name in splits],
    }
    if params.get("preferences") in ("derive", "path"):
        report["preferences"] = _write_preferences(params, splits, seed, out_dir, ctx)
    write_json(out_dir / REPORT_NAME, report)
    c = report["counts"]
    ctx.logger.info(
        f"data: {c['read']} read, {c['valid']} valid, {c['rejected']} rejected, "
        f"{c['duplicates']} duplicates -> train {c['train']} / val {c['val']} / test {c['test']}"
    )
    return report


def _load(params: dict, source: str) -> tuple[formats.LoadResult, str]:
    """Loads the source's rows in chat form; returns them and a description of where from."""
    fmt = params.get("format") or "auto"
    system_prompt = params.get("system_prompt")
    try:
        if source == "task_api":
            rows = task_api.generate(
                int(params.get("n_examples", 1200)), int(params.get("seed", 0))
            )
            if system_prompt:
                for row in rows:
                    row["messages"][0]["content"] = system_prompt
            for line, row in enumerate(rows, start=1):  # OpenAI rows, tool_calls kept
                row["meta"]["line"] = line
            return formats.LoadResult("chat", rows, [], len(rows)), "task_api generator"
        if source == "jsonl":
            path = _input_file(params.get("path"))
            return formats.read_jsonl(path, fmt, system_prompt, "jsonl"), str(path)
        if source == "hf":
            return _load_hf(params, fmt, system_prompt)
    except formats.FormatError as exc:
        raise StageError(f"data: {exc}") from exc
    except ValueError as exc:  # task_api.generate's argument checks
        raise StageError(f"data: {exc} Check data.n_examples.") from exc
    raise StageError(
        f"data.source: {source!r} is not one of task_api, jsonl, hf. Use data=task_api, data=jsonl "
        "data.path=FILE, or data=hf data.hf_id=NAME."
    )


def _input_file(path: str | None, key: str = "data.path") -> Path:
    if not path:
        raise StageError(
            "data.path: not set (None) while data.source=jsonl. Set data.path=/abs/path/file.jsonl."
        )
    file = Path(path).expanduser()
    kind = formats.not_regular(file)
    if kind is not None:
        raise StageError(f"{key}: {file} is {kind}, not a regular file. Point {key} at a JSONL "
                         "file.")
    if not file.is_file():
        raise StageError(f"{key}: {file} does not exist. Point {key} at a JSONL file.")
    return file


def _load_hf(params: dict, fmt: str, system_prompt: str | None) -> tuple[formats.LoadResult, str]:
    hf_id, split = params.get("hf_id"), params.get("hf_split") or "train"
    if not hf_id:
        raise StageError("data.hf_id: not set (None) while data.source=hf. Set data.hf_id=NAME.")
    try:
        import datasets
    except ImportError as exc:
        raise StageError(
            "data.source=hf: the 'datasets' package is not installed. pip install datasets."
        ) from exc
    try:
        dataset = datasets.load_dataset(hf_id, split=split)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types; report them all the same
        raise StageError(
            f"data.hf_id: cannot load {hf_id!r} split {split!r} ({type(exc).__name__}: {exc}). "
            "Check the name, data.hf_split, and that the hub can be reached."
        ) from exc
    records = [(i, dict(row)) for i, row in enumerate(dataset, start=1)]
    return formats.normalise_records(records, fmt, system_prompt, "hf"), f"{hf_id}[{split}]"


def _annotate(row: dict[str, Any]) -> None:
    """Adds meta.tool and meta.refuse from the reference answer when the row lacks them."""
    last = row["messages"][-1]
    calls = last.get("tool_calls") or []
    row["meta"].setdefault("tool", calls[0]["function"]["name"] if calls else None)
    row["meta"].setdefault("refuse", not calls and task_api.is_refusal(last["content"] or ""))


def _row_hash(row: dict[str, Any]) -> str:
    text = json.dumps(row["messages"], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _dedup(rows: list[dict]) -> tuple[list[dict], list[dict[str, Any]]]:
    """Keeps the first of rows whose normalised messages are identical; lists the others."""
    first: dict[str, Any] = {}
    kept, dropped = [], []
    for row in rows:
        key = _row_hash(row)
        line = row["meta"].get("line")
        if key in first:
            dropped.append({"line": line, "duplicate_of": first[key]})
        else:
            first[key] = line
            kept.append(row)
    return kept, dropped


def _stratum(row: dict[str, Any]) -> str:
    meta = row["meta"]
    return "refusal" if meta.get("refuse") else str(meta.get("tool") or "none")


def _tools(rows: list[dict]) -> dict[str, int]:
    return dict(sorted(Counter(_stratum(r) for r in rows).items()))


def _size(n: int, fraction: float) -> int:
    if fraction <= 0:
        return 0
    return max(1, round(n * fraction)) if n >= 3 else 0


def split_rows(
    rows: list[dict], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[dict]]:
    """Splits rows into train/val/test, stratified by tool (refusals are their own stratum).

    Each stratum is shuffled with ``seed``, then all rows are ordered by their position inside
    their stratum relative to its size, so any prefix holds every stratum in proportion. Test takes
    the first ``round(n * test_fraction)`` rows, val the next ``round(n * val_fraction)``, train the
    rest. A non-zero fraction gets at least one row when there are 3 rows or more.

    Raises:
        StageError: If the fractions are out of range or leave no training row.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise StageError(
            f"data.val_fraction/test_fraction: must be ≥ 0 and sum to < 1 (got {val_fraction}, "
            f"{test_fraction}). E.g. data.val_fraction=0.1 data.test_fraction=0.1."
        )
    rng = random.Random(seed)
    strata: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        strata[_stratum(row)].append(row)
    keyed = []
    for name in sorted(strata):
        group = strata[name]
        rng.shuffle(group)
        keyed += [((i + 0.5) / len(group), rng.random(), row) for i, row in enumerate(group)]
    keyed.sort(key=lambda k: (k[0], k[1]))
    ordered = [row for _, _, row in keyed]
    n = len(ordered)
    n_test, n_val = _size(n, test_fraction), _size(n, val_fraction)
    if n - n_test - n_val < 1:
        raise StageError(
            f"data: {n} valid rows are too few to split with val_fraction={val_fraction} and "
            f"test_fraction={test_fraction}. Add rows or lower the fractions."
        )
    return {
        "train": ordered[n_test + n_val :],
        "val": ordered[n_test : n_test + n_val],
        "test": ordered[:n_test],
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def token_stats(rows: list[dict], params: dict, inputs: dict[str, Path], ctx: StageContext) -> dict:
    """Measures token lengths of whole chats with the model's tokenizer.

    A chat is rendered with the tokenizer's chat template when it has one (through transformers;
    ids as the trainer sees them), else its message contents are joined with newlines. A local
    folder's tokenizer.json is encoded with the ``tokenizers`` library directly (fast). When no
    tokenizer can be loaded the stats are skipped with the reason, and a warning is logged: they
    are informational, the sft stage loads the tokenizer itself and reports its own errors.

    Rows longer than ``max_length`` tokens are kept (training truncates them) and named by line
    in ``over_max_length_rows`` (the first ``MAX_LISTED``), with their token count.

    Returns:
        ``{"tokenizer", "method", "count", "min", "mean", "p50", "p95", "max", "max_length",
        "over_max_length", "over_max_length_rows"}``, or ``{"tokenizer", "skipped": reason}``.
    """
    max_length = int(params.get("max_length", 512))
    name = None
    try:
        name = base_model_path(params, inputs)
        lengths, method = _measure(rows, name, params.get("model") or {})
    except Exception as exc:  # noqa: BLE001 - stats are best effort; the reason goes in the report
        ctx.logger.warning("data: token lengths skipped (%s: %s)", type(exc).__name__, exc)
        return {"tokenizer": name, "skipped": f"{type(exc).__name__}: {exc}"}
    ordered = sorted(lengths)
    over = [{"line": row["meta"].get("line"), "tokens": n}
            for row, n in zip(rows, lengths, strict=True) if n > max_length]

    def pct(q: int) -> int:  # nearest rank
        return ordered[max(0, math.ceil(len(ordered) * q / 100) - 1)]

    return {
        "tokenizer": name,
        "method": method,
        "count": len(ordered),
        "min": ordered[0],
        "mean": round(sum(ordered) / len(ordered), 2),
        "p50": pct(50),
        "p95": pct(95),
        "max": ordered[-1],
        "max_length": max_length,
        "over_max_length": len(over),
        "over_max_length_rows": over[:MAX_LISTED],
    }


def _has_template(folder: Path) -> bool:
    config = folder / "tokenizer_config.json"
    if (folder / "chat_template.jinja").is_file():
        return True
    if config.is_file():
        return bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
    return False


def _measure(rows: list[dict], name: str, model: dict) -> tuple[list[int], str]:
    """Returns the token count of each row's whole chat and how the chat was rendered."""
    folder = Path(name)
    local_json = folder / "tokenizer.json" if folder.is_dir() else None
    if local_json is not None and local_json.is_file() and not _has_template(folder):
        from tokenizers import Tokenizer

        texts = ["\n".join(m["content"] or "" for m in r["messages"]) for r in rows]
        encoded = Tokenizer.from_file(str(local_json)).encode_batch(texts)
        return [len(e.ids) for e in encoded], "joined_contents"

    if local_json is not None and local_json.is_file():
        # Only the template is rendered here (ids come from tokenizer.json below), so the generic
        # fast class does; it also avoids AutoTokenizer's import of torch (~4 s).
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast.from_pretrained(name)
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(
            name, trust_remote_code=bool(model.get("trust_remote_code", False))
        )
    if getattr(tok, "chat_template", None):
        texts = [tok.apply_chat_template(r["messages"], tools=r.get("tools"), tokenize=False)
                 for r in rows]
        method, special = "chat_template", False
    else:
        texts = ["\n".join(m["content"] or "" for m in r["messages"]) for r in rows]
        method, special = "joined_contents", True
    if local_json is not None and local_json.is_file():
        from tokenizers import Tokenizer

        fast = Tokenizer.from_file(str(local_json))
        return [len(e.ids) for e in fast.encode_batch(texts, add_special_tokens=special)], method
    ids = tok(texts, add_special_tokens=special)["input_ids"]
    return [len(x) for x in ids], method


def _write_preferences(params: dict, splits: dict[str, list[dict]], seed: int, out_dir: Path,
                       ctx: StageContext) -> dict[str, Any]:
    """Writes pref_{train,val,test}.jsonl (DPO pairs) and returns their report section.

    params["preferences"] is "derive" (one pair per row of each split, so held-out pairs come from
    held-out prompts) or "path" (the user's file at preference_path, split like the rows).
    """
    from llmops.data import preferences

    if params["preferences"] == "path":
        path = _input_file(params.get("preference_path"), "data.preference_path")
        pairs, rejects, n_read = preferences.read_pairs(path, params.get("system_prompt"))
        if not pairs:
            first = "; ".join(f"line {r['line']}: {r['reason']}" for r in rejects[:3])
            raise StageError(f"data.preference_path: no valid pair in {path} ({n_read} read"
                             f"{': ' + first if first else ''}). Each line needs prompt, chosen, "
                             "rejected.")
        parts = split_rows(pairs, float(params.get("val_fraction", 0.1)),
                           float(params.get("test_fraction", 0.1)), seed)
        section: dict[str, Any] = {"method": "path", "origin": str(path), "read": n_read,
                                   "rejects": rejects[:MAX_LISTED]}
    else:
        parts, kinds = {}, Counter()
        for i, (name, rows) in enumerate(splits.items()):
            parts[name], k = preferences.derive(rows, seed + 1000 * (i + 1))
            kinds.update(k)
        if not parts["train"]:
            raise StageError("data: no preference pair could be derived from the rows. Give "
                             "pairs with data.preference_path=FILE.jsonl (prompt/chosen/rejected).")
        section = {"method": "derive", "kinds": dict(sorted(kinds.items())),
                   "derivation": {k: preferences.DERIVATION[k] for k in sorted(kinds)}}
    for name, part in parts.items():
        write_jsonl(out_dir / f"pref_{name}.jsonl", part)
    section["counts"] = {name: len(part) for name, part in parts.items()}
    section["files"] = [f"pref_{name}.jsonl" for name in parts]
    ctx.logger.info("data: preference pairs (%s) train %d / val %d / test %d", section["method"],
                    *(section["counts"][n] for n in ("train", "val", "test")))
    return section
