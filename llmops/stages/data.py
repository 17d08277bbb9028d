"""The data stage: read every source, check every row, drop duplicates, mix, split, and write.

Sources (``params["source"]``):
- ``task_api``: the bundled generator, ``n_examples`` rows from ``seed``, in the OpenAI form.
- ``files``: ``params["sources"]``, each ``{path, format, weight, samples, columns, tags}`` (a
  file, a ``save_to_disk`` folder or a glob; see ``llmops.data.readers``).
- ``hf``: ``datasets.load_dataset(hf_id, split=hf_split)``, converted like a columnar file.

Every source is read through ``datasets`` (Arrow, memory-mapped, ``num_proc``) in one pass per
batch (``llmops.data.pipeline``): converted to canonical rows (``llmops.data.canonical``),
measured in the model's tokens, checked (``toolcheck``: tool calls against their schemas, turn
order, lengths) and rendered as the line the split files hold. The rows are then deduplicated
by a content hash, mixed by each source's weight or sample count, and split stratified by kind
and tool, all as index selections; writing a split picks its rendered lines. Writes
train.jsonl, val.jsonl, test.jsonl (OpenAI rows + meta, see CONTRACT.md), pref_*.jsonl when
the data are preference pairs, and data_report.json, whose ``preview`` shows the first
``preview.rows`` train rows as sft tokenizes them, loss spans marked (``data_preview``; the first
is printed). With ``on_error=fail`` any reject stops the
stage (``DataRejected``, exit 5) before anything trains.

Rows are untrusted: ``params["limits"]`` (the config's ``limits.*``) bounds each row's size,
nesting, schema-pattern time and template-render time; past a bound a row is one reject, and a
template render past ``template_seconds`` is a config error (exit 2). SIGTERM during the stage
exits 143: its forked map workers die with it.
"""

from __future__ import annotations

import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmops.compiler.builders.data import DataParams
from llmops.core.context import StageContext
from llmops.core.plan import report_name
from llmops.data import lengths, mix, pipeline, task_api
from llmops.data.convert import FormatError
from llmops.data.limits import Limits, TimeLimit
from llmops.data.parts import UNSUPPORTED_FIX
from llmops.errors import ConfigError, DataRejected, Problem, StageError
from llmops.files import write_json
from llmops.stages import data_io

REPORT_NAME = report_name("data")
UNSUPPORTED = "unsupported_modality"
MAX_LISTED = 200
SHOWN_IN_ERROR = 10
SPLITS = ("train", "val", "test")


@dataclass
class Source:
    """One source after reading and checking: its clean rows (annotated) and its rejects."""

    name: str
    spec: dict[str, Any]
    kind: str
    rows: Any
    rejects: Any
    n_read: int


def run(params: DataParams, inputs: dict[str, Path], out_dir: Path, ctx: StageContext) -> dict:
    """Prepares the dataset and writes the split files and data_report.json into ``out_dir``.

    Args:
        params: The data params (``DataParams``): source, sources, format, columns, tags, hf_id,
            hf_split, system_prompt, n_examples, val_fraction, test_fraction, seed, dedup,
            max_length, on_error, num_proc, model, limits, preview (the same for every method).
        inputs: ``{"base": Path}`` for the tiny model (its tokenizer measures lengths), else empty.
        out_dir: The empty folder to write into.
        ctx: The run context (logger).

    Returns:
        The report, as written to data_report.json.

    Raises:
        StageError: When a source cannot be read, its format cannot be decided, no valid row is
            left, or too few rows remain to split.
        DataRejected: When ``on_error`` is ``fail`` and any row was rejected.
    """
    import datasets

    out_dir = Path(out_dir)
    scratch = out_dir / ".arrow"  # datasets' cache files: this stage's own, gone when it ends
    if not ctx.show_progress:
        datasets.disable_progress_bars()
    _FORKED_WORKERS_DIE_ON_SIGTERM[0] = True
    try:
        return _prepare(params, inputs, out_dir, str(scratch), ctx)
    except BaseException as exc:
        stop = _interrupt_behind(exc)
        if stop is not None and stop is not exc:
            raise stop from None
        raise
    finally:
        _FORKED_WORKERS_DIE_ON_SIGTERM[0] = False
        shutil.rmtree(scratch, ignore_errors=True)


# datasets' map workers (num_proc) are forked from this process and inherit its Python SIGTERM
# and SIGINT handlers (the job's: raise in the main thread). A worker that is inside C code, or
# blocked on a lock forked in a held state, never runs such a handler, so the pool's terminate
# (its SIGTERM) never ended it and the stopped job hung. Forked during the stage, a worker gets
# the default actions back: SIGTERM ends it at once, and the job exits 143.
_FORKED_WORKERS_DIE_ON_SIGTERM = [False]


def _interrupt_behind(exc: BaseException) -> BaseException | None:
    """Returns the Ctrl-C or SIGTERM (KeyboardInterrupt) an error was raised while handling.

    datasets' map with num_proc waits for its workers' results in a ``finally`` when the wait is
    interrupted, and that wait's own TimeoutError then hides the interrupt: the job would exit 1
    with a traceback instead of 130/143.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__context__
    return None


def _default_signals_in_child() -> None:
    if _FORKED_WORKERS_DIE_ON_SIGTERM[0]:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)


os.register_at_fork(after_in_child=_default_signals_in_child)


def _prepare(params: dict, inputs: dict[str, Path], out_dir: Path, cache: str,
             ctx: StageContext) -> dict:
    counter, lengths_info = data_io.token_counter(params, inputs, ctx)
    demo_note = data_io.demo_model_note(params, inputs, lengths_info)
    if demo_note:
        ctx.logger.warning("data: %s", demo_note)
    sources = [_checked(name, spec, params, counter, cache, ctx)
               for name, spec in data_io.specs(params)]
    kind = _one_kind(sources)
    n_rejected = sum(len(s.rejects) for s in sources)
    valid = [len(s.rows) for s in sources]
    n_unsupported = _by_code(sources).get(UNSUPPORTED, 0)
    if n_unsupported and params["on_unsupported"] == "fail":
        _refuse_modalities(sources, n_unsupported)
    dropped = n_unsupported if params["on_unsupported"] == "drop" else 0
    if params["on_error"] == "fail" and n_rejected - dropped:
        _fail(sources, n_rejected)
    if not sum(valid):
        first = "; ".join(_reject_line(r) for r in _listed(sources, 3))
        n_read = sum(s.n_read for s in sources)
        if set(_by_code(sources)) == {"template_error"}:  # the template, not the rows, is wrong
            raise ConfigError([Problem("model.chat_template", (
                f"the chat template fails on every row of {_origin(params)} ({n_rejected} rows: "
                f"{first}). Fix the template, or choose one that renders these rows (e.g. "
                "model.chat_template=auto or a TRL family such as qwen2_5, llama3_1)."))])
        raise StageError(f"data: no valid rows in {_origin(params)} ({n_read} read, "
                         f"{n_rejected} rejected{': ' + first if first else ''}). Fix the "
                         "rows or point data at other data.")
    import datasets

    filled = [s.rows for s in sources if len(s.rows)]
    rows = datasets.concatenate_datasets(filled) if len(filled) > 1 else filled[0]
    offsets = np.cumsum([0, *valid])
    ann = data_io.gather(rows, [mix.HASH, mix.KIND, mix.TOOL, mix.CALLS, mix.DECLARED,
                                lengths.TOKENS, lengths.MEASURED, pipeline.LABEL,
                                *REASONING])
    positions = np.arange(len(rows))
    first = mix.first_occurrences(ann[mix.HASH].to_numpy()) if params["dedup"] else positions
    duplicate = first != positions
    seed = params["seed"]
    rng = np.random.default_rng(seed)
    chosen, extra = [], []
    for i, s in enumerate(sources):
        own = positions[offsets[i]:offsets[i + 1]]
        own = own[~duplicate[own]]
        picked, n_repeat = mix.take(own.size, s.spec["weight"], s.spec["samples"], rng)
        chosen.append(own[picked])
        extra.append(n_repeat)
    chosen_all = np.concatenate(chosen)
    labels = mix.Labels(ann[mix.KIND], ann[mix.TOOL])
    # Rows labelled undesirable (label=false) are for KTO: they all go to train.jsonl, so val and
    # test (eval's references) hold only answers to learn; sft leaves them out of training.
    label = data_io.label_codes(ann[pipeline.LABEL])
    undesirable = chosen_all[label[chosen_all] == 0]
    if undesirable.size and undesirable.size == chosen_all.size:
        raise StageError(f"data: every one of the {chosen_all.size} rows of {_origin(params)} is "
                         "labelled undesirable (label=false): no answer to learn or evaluate. "
                         "Add desirable rows (label=true), or fix the labels.")
    if undesirable.size:
        chosen_all = chosen_all[label[chosen_all] != 0]
    strata, _ = labels.codes(chosen_all, _stratum)
    try:
        local = mix.split_indices(strata, params["val_fraction"], params["test_fraction"], seed)
    except ValueError as exc:
        raise StageError(f"data: {exc}") from exc
    splits = {name: chosen_all[idx] for name, idx in local.items()}
    splits["train"] = np.concatenate([splits["train"], undesirable])
    chosen_all = np.concatenate([chosen_all, undesirable])
    source_of = np.searchsorted(offsets, positions, side="right") - 1
    repeated = [mix.repeats(splits["train"][source_of[splits["train"]] == i], n, rng)
                for i, n in enumerate(extra)]
    splits["train"] = np.concatenate([splits["train"], *repeated])
    _check_reasoning(ann, chosen_all, counter, params)

    for name, idx in splits.items():
        data_io.write_rows(out_dir / f"{name}.jsonl", rows, idx)
    report = {
        "source": params["source"], "origin": _origin(params), "kind": kind, "seed": seed,
        "formats": _formats(sources),
        "counts": {"read": sum(s.n_read for s in sources), "valid": int(sum(valid)),
                   "rejected": n_rejected, "duplicates": int(duplicate.sum()),
                   "repeated": int(sum(r.size for r in repeated)),
                   **{name: int(idx.size) for name, idx in splits.items()}},
        "kinds": {"all": labels.count(chosen_all, _kind),
                  **{name: labels.count(idx, _kind) for name, idx in splits.items()}},
        "tool_calls": _tool_calls(ann, chosen_all, splits),
        "labels": data_io.label_counts(label, chosen_all, splits),
        "reasoning": _reasoning(ann, chosen_all, splits, params,
                                bool(getattr(counter, "template", False))),
        "unused": data_io.unused(rows),
        "sources": [_source_report(s, i, source_of, duplicate, chosen[i], repeated[i], splits)
                    for i, s in enumerate(sources)],
        "rejects_by_code": _by_code(sources),
        "rejects": [r for r in _listed(sources, MAX_LISTED)],
        "duplicate_rows": data_io.duplicates(rows, np.flatnonzero(duplicate)[:MAX_LISTED],
                                             first),
        "tool_distribution": {"all": labels.count(chosen_all, _tool_label),
                              **{n: labels.count(i, _tool_label) for n, i in splits.items()}},
        "token_lengths": data_io.token_stats(ann, chosen_all, params["max_length"], lengths_info,
                                             rows, MAX_LISTED),
        "files": [f"{name}.jsonl" for name in splits],
    }
    if demo_note:
        report["model_note"] = demo_note
    pref = _preferences(kind, rows, splits, out_dir, ctx)
    if pref is not None:
        report["preferences"] = pref
    if params["preview"]["rows"]:
        from llmops.stages import data_preview

        report["preview"] = data_preview.build(getattr(counter, "tokenizer", None),
                                               out_dir / "train.jsonl", params)
    write_json(out_dir / REPORT_NAME, report)
    if params["preview"]["rows"]:
        data_preview.show(report["preview"], out_dir / REPORT_NAME)
    c = report["counts"]
    ctx.logger.info(
        f"data: {c['read']} read, {c['valid']} valid, {c['rejected']} rejected, "
        f"{c['duplicates']} duplicates -> train {c['train']} / val {c['val']} / test {c['test']}"
        f"; kinds {report['kinds']['all']}"
    )
    if report["reasoning"].get("note"):
        ctx.logger.warning("data: %s", report["reasoning"]["note"])
    data_io.say_labels(report["labels"], ctx.logger)
    data_io.say_unused(report["unused"], ctx.logger)
    if n_rejected:
        ctx.logger.warning("data: %d rows rejected (%s); listed in %s. data.on_error=fail stops "
                           "the run on any reject.", n_rejected, ", ".join(
                               f"{k} {v}" for k, v in report["rejects_by_code"].items()),
                           out_dir / REPORT_NAME)
    return report


def _checked(name: str, spec: dict[str, Any], params: dict, counter: Any, cache: str,
             ctx: StageContext) -> Source:
    """Reads one source and checks it, in one pass per batch (``pipeline``): converted,
    annotated, measured, checked and rendered as written."""
    measured = counter is not lengths.estimate
    prepare = pipeline.Prepare(name, params["system_prompt"] if name != task_api.SOURCE else None,
                               counter, params["max_length"] if measured else None,
                               Limits.of(params["limits"]), params.get("reasoning", "train"))
    try:
        rows, rejects = data_io.read(name, spec, params, cache, prepare, ctx.logger.warning)
    except FormatError as exc:  # its message names the key (data.path, data.format, ...)
        raise StageError(str(exc)) from exc
    except TimeLimit as exc:
        raise ConfigError([Problem("model.chat_template", (
            f"rendering a row of {name} through the chat template took longer than "
            f"limits.template_seconds={exc.seconds:g} (a loop that runs too long?). Fix the "
            "template, or raise limits.template_seconds."))]) from None
    return Source(name, spec, prepare.kind, rows, rejects, len(rows) + len(rejects))


REASONING = (pipeline.REASONING, pipeline.TRACE_TOKENS, pipeline.TRACES_RENDERED)


def _check_reasoning(ann: Any, chosen: np.ndarray, counter: Any, params: dict) -> None:
    """Refuses (exit 2) a model template that cannot render the reasoning the kept rows have,
    unless data.reasoning=drop left it out."""
    from llmops.config.templates import reasoning_problem, renders_reasoning

    tok = getattr(counter, "tokenizer", None)
    template = getattr(tok, "chat_template", None) if tok is not None else None
    traces = ann[pipeline.REASONING].to_numpy()[chosen]
    if params.get("reasoning", "train") == "drop" or not template or not traces.any():
        return
    seconds = params["limits"]["template_seconds"]
    if renders_reasoning(template, seconds):
        return
    value, rows = params["model"]["chat_template"], int((traces > 0).sum())
    if value == "chatml":  # the tiny model trains through its own template only
        raise ConfigError([Problem("data.reasoning", (
            f"the tiny model's template cannot render reasoning, but {rows} rows of "
            f"{_origin(params)} have it. Use data.reasoning=drop to train without it, or a "
            "model whose template renders it (model=hub model.hub_id=... with "
            "model.chat_template=qwen3 or gptoss)."))])
    raise ConfigError([Problem("model.chat_template", reasoning_problem(
        repr(value), f"{rows} rows of {_origin(params)}", seconds))])


def _reasoning(ann: Any, chosen: np.ndarray, splits: dict[str, np.ndarray],
               params: dict, rendered: bool) -> dict[str, Any]:
    """Returns data_report.json's reasoning: data.reasoning (``mode``), and over the kept rows
    (and ``by_split``) the rows with reasoning, their traces (assistant messages with
    ``reasoning_content``, as read: with drop, left out of the written rows), the traces' tokens
    and how many the model's template renders (Qwen3's leaves out those of turns before the last
    user message: the model never sees them, in any mode; None without a template)."""
    cols = {k: ann[k].to_numpy() for k in REASONING}

    def count(idx: np.ndarray) -> dict[str, int | None]:
        traces = cols[pipeline.REASONING][idx]
        return {"rows": int((traces > 0).sum()), "traces": int(traces.sum()),
                "tokens": int(cols[pipeline.TRACE_TOKENS][idx].sum()),
                "rendered": int(cols[pipeline.TRACES_RENDERED][idx].sum()) if rendered
                else None}

    mode = params.get("reasoning", "train")
    out: dict[str, Any] = {"mode": mode, **count(chosen),
                           "by_split": {name: count(idx) for name, idx in splits.items()}}
    if mode != "drop" and rendered and out["rendered"] < out["traces"]:
        out["note"] = (f"the model's template renders {out['rendered']} of {out['traces']} "
                       "reasoning traces: a trace it leaves out (Qwen3's template keeps only the "
                       "turns after the last user message) is neither seen nor trained on. Split "
                       "such conversations into one row per turn to train on every trace.")
    return out


def _one_kind(sources: list[Source]) -> str:
    kinds = {s.name: s.kind for s in sources}
    if len(set(kinds.values())) > 1:
        listed = ", ".join(f"{n}: {k}" for n, k in kinds.items())
        raise StageError(f"data.sources: the sources hold different kinds of rows ({listed}). "
                         "Mix only chat sources, or only text, or only preference pairs.")
    return next(iter(kinds.values()))


def _origin(params: dict) -> str:
    if params["source"] == "task_api":
        return "task_api generator"
    if params["source"] == "hf":
        return f"{params['hf_id']}[{params['hf_split']}]"
    return " + ".join(s["path"] for s in params["sources"])


def _fail(sources: list[Source], n: int) -> None:
    shown = "\n".join(f"  - {_reject_line(r)}" for r in _listed(sources, SHOWN_IN_ERROR))
    more = f"\n  ... and {n - SHOWN_IN_ERROR} more" if n > SHOWN_IN_ERROR else ""
    codes = ", ".join(f"{k} {v}" for k, v in _by_code(sources).items())
    raise DataRejected(f"data: {n} rows rejected ({codes}) and data.on_error=fail, so nothing "
                       f"trains:\n{shown}{more}\nFix these rows, or set data.on_error=keep to "
                       f"train on the {sum(len(s.rows) for s in sources)} valid rows and list "
                       "the rejects in data_report.json.")


def _refuse_modalities(sources: list[Source], n: int) -> None:
    listed = []
    for s in sources:
        if len(listed) >= SHOWN_IN_ERROR:
            break
        mine = data_io.code_rows(s.rejects, UNSUPPORTED)
        listed += data_io.reject_entries(s.rejects.select(mine), s.name,
                                         SHOWN_IN_ERROR - len(listed))
    shown = "\n".join(f"  - {_reject_line(r)}" for r in listed)
    more = f"\n  ... and {n - SHOWN_IN_ERROR} more" if n > SHOWN_IN_ERROR else ""
    raise DataRejected(f"data: {n} rows hold images, audio or video, which llmops does not "
                       f"train on:\n{shown}{more}\n{UNSUPPORTED_FIX}")


def _reject_line(r: dict[str, Any]) -> str:
    where = f"{r['file']}:{r['line']}" if r["line"] is not None else f"{r['file']} row {r['row']}"
    return f"{where} {r['path']}: [{r['code']}] {r['message']}"


def _listed(sources: list[Source], limit: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for s in sources:
        if len(out) >= limit:
            break
        out += data_io.reject_entries(s.rejects, s.name, limit - len(out))
    return out


def _by_code(sources: list[Source]) -> dict[str, int]:
    from llmops.data.prepare import count_rejects

    total: dict[str, int] = {}
    for s in sources:
        for code, n in (count_rejects(s.rejects) if len(s.rejects) else {}).items():
            total[code] = total.get(code, 0) + n
    return dict(sorted(total.items(), key=lambda x: (-x[1], x[0])))


def _stratum(kind: str, tool: str | None) -> str:
    return f"{kind}:{tool or ''}"


def _kind(kind: str, tool: str | None) -> str:
    return kind


def _tool_label(kind: str, tool: str | None) -> str:
    return tool if tool else ("refusal" if kind == "refusal" else "none")


def _tool_calls(ann: Any, chosen: np.ndarray, splits: dict[str, np.ndarray]) -> dict[str, Any]:
    """Counts the rows that call tools (any assistant turn), their calls, and the rows that
    declare tools, over the chosen rows and per split."""
    calls, declared = ann[mix.CALLS].to_numpy(), ann[mix.DECLARED].to_numpy()
    return {"rows_with_calls": int((calls[chosen] > 0).sum()), "calls": int(calls[chosen].sum()),
            "rows_with_tools": int((declared[chosen] > 0).sum()),
            "rows_with_calls_by_split": {n: int((calls[i] > 0).sum()) for n, i in splits.items()}}


def _formats(sources: list[Source]) -> dict[str, int]:
    import pyarrow.compute as pc

    total: dict[str, int] = {}
    for s in sources:
        if len(s.rows):
            meta = data_io.gather(s.rows, ["meta"])["meta"]
            for d in pc.value_counts(pc.struct_field(meta, "format")).to_pylist():
                total[d["values"]] = total.get(d["values"], 0) + d["counts"]
    return dict(sorted(total.items()))


def _source_report(s: Source, i: int, source_of: np.ndarray, duplicate: np.ndarray,
                   chosen: np.ndarray, repeated: np.ndarray, splits: dict[str, np.ndarray]
                   ) -> dict[str, Any]:
    mine = source_of == i
    return {
        "name": s.name, "weight": s.spec["weight"], "samples": s.spec["samples"],
        "counts": {"read": s.n_read, "valid": len(s.rows), "rejected": len(s.rejects),
                   "duplicates": int((duplicate & mine).sum()), "selected": int(chosen.size),
                   "repeated": int(repeated.size),
                   **{name: int(mine[idx].sum()) for name, idx in splits.items()}},
    }


def _preferences(kind: str, rows: Any, splits: dict[str, np.ndarray], out_dir: Path,
                 ctx: StageContext) -> dict[str, Any] | None:
    """Writes pref_{train,val,test}.jsonl when the data are preference pairs; returns their
    report section (None for any other data: the preference stages derive or read their pairs,
    ``llmops.stages.pairs``)."""
    if kind != "preference":
        return None
    counts = {}
    for name, idx in splits.items():
        data_io.write_rows(out_dir / f"pref_{name}.jsonl", rows, idx, pipeline.PAIR)
        counts[name] = int(idx.size)
    section: dict[str, Any] = {"method": "rows"}
    section["counts"] = counts
    section["files"] = [f"pref_{name}.jsonl" for name in SPLITS]
    ctx.logger.info("data: preference pairs (%s) train %d / val %d / test %d", section["method"],
                    *(counts[n] for n in SPLITS))
    return section
