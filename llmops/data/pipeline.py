"""The data stage's single pass over a batch of records: convert, add the system prompt,
annotate, measure, check, and render each row's output line.

Contract, for ``readers.read_source(..., prepare=Prepare(...))`` and the stage's other sources:

    batches = Prepare(source, system_prompt, counter, max_length, limits)(converter)
    rows = records.map(batches, batched=True, with_indices=True, features=batches.features, ...)

Each output row holds ``meta``, ``reject`` (the converter's, else the checks'), the annotation
columns (``mix.facts``: kind, tool, calls, declared tools; ``mix.content_hash`` of the row as
written), the token count
(``lengths``), and ``_line``: the row exactly as the stage writes it to train/val/test.jsonl
(OpenAI row + meta, one JSON text); preference rows also get ``_pair`` (the pref_*.jsonl line).
So the rows are decoded once, from the converter's Python objects, and never read back out of
Arrow to be checked or written: the stage only picks lines by position.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from llmops.data import lengths, mix, pages
from llmops.data.canonical import message, plain_message
from llmops.data.convert import UNUSED, UNUSED_EXAMPLE
from llmops.data.limits import Limits
from llmops.data.toolcheck import check_rows
from llmops.files import json_default

LINE, PAIR, LABEL, REASONING = "_line", "_pair", "_label", "_reasoning"
ANNOTATIONS = (mix.HASH, mix.KIND, mix.TOOL, mix.CALLS, mix.DECLARED)


def features(kind: str):
    """Returns the ``datasets.Features`` of the pass's output for a canonical kind."""
    from datasets import Features, List, Value

    from llmops.data.canonical import features as canonical

    own = canonical(kind)
    columns = {"meta": own["meta"], "reject": own["reject"], mix.HASH: Value("int64"),
               mix.KIND: Value("string"), mix.TOOL: Value("string"), mix.CALLS: Value("int64"),
               mix.DECLARED: Value("int64"), lengths.TOKENS: Value("int64"),
               lengths.MEASURED: Value("bool"), LINE: Value("string"), LABEL: Value("bool"),
               REASONING: Value("int64"), UNUSED: List(Value("string")),
               UNUSED_EXAMPLE: Value("string")}
    if kind == "preference":
        columns[PAIR] = Value("string")
    return Features(columns)


def _messages(turns: list[dict[str, Any]]) -> str:
    return dumps([plain_message(m) for m in turns])


def body(row: Mapping[str, Any], kind: str) -> str:
    """Returns a canonical row's written JSON without its closing brace and ``meta``: exactly
    what ``json.dumps(to_openai_row(row))`` starts with, ``tools`` spliced in as the row holds
    them (``canonical.tools_json`` wrote that text with the same encoder).

    Args:
        row: The canonical row's content columns.
        kind: Its canonical kind; ``"pairs"`` writes a preference row as a pair, and a
            preference row of a chat split trains on its chosen answer.
    """
    if kind == "text":
        return '{"text": ' + dumps(row["text"])
    if kind == "pairs":
        text = ", ".join(f'"{k}": {_messages(row[k])}' for k in ("prompt", "chosen", "rejected"))
        text = "{" + text
    elif kind == "preference":
        text = '{"messages": ' + _messages([*row["prompt"], *row["chosen"]])
    else:
        text = '{"messages": ' + _messages(row["messages"])
    text += ', "tools": ' + row["tools"] if row["tools"] else ""
    label = row.get("label")
    return text + (', "label": ' + ("true" if label else "false") if label is not None else "")


def line(text: str, meta: Mapping[str, Any], source: str, kind: str, tool: str | None) -> str:
    """Returns a written row's JSON text: its ``body`` closed with the ``meta`` it carries."""
    return text + ', "meta": ' + dumps(
        {"source": source, "file": meta["file"], "line": meta["line"], "row": meta["row"],
         "format": meta["format"], "kind": kind, "tool": tool, "refuse": kind == "refusal"}) + "}"


def reasoning_turns(row: Mapping[str, Any]) -> int:
    """Returns how many of a row's messages carry a reasoning trace."""
    turns = row.get("messages") or [*(row.get("prompt") or []), *(row.get("chosen") or [])]
    return sum(1 for m in turns if m.get("reasoning_content"))


def dumps(value: Any) -> str:
    """Returns a value's JSON text in the split files' encoding."""
    return json.dumps(value, ensure_ascii=False, default=json_default)


class Prepare:
    """Builds the pass's batch function for each file's converter (see the module docstring).

    Args:
        source: The source's name, as ``meta.source`` says.
        system_prompt: Prepended as a system message to each chat (or prompt) that opens
            without one; None for none.
        counter: The token-count batch function (``lengths.TokenCounter`` or ``estimate``).
        max_length: Rows longer than this many tokens are rejected (``too_long``); None to
            only count them (lengths estimated).
        limits: The bounds on rows (``toolcheck``'s patterns and nesting); None for none.
    """

    def __init__(self, source: str, system_prompt: str | None, counter: Any,
                 max_length: int | None, limits: Limits | None = None):
        self.source, self.system_prompt = source, system_prompt
        self.counter, self.max_length, self.limits = counter, max_length, limits
        self.kind: str | None = None

    def __call__(self, convert: Any) -> RowPass:
        """Returns the batch function for one converter; remembers its kind."""
        self.kind = convert.kind
        return RowPass(convert, self)


class RowPass:
    """A picklable ``Dataset.map`` batch function: records in, an Arrow table of the pass's
    columns out (``features``)."""

    def __init__(self, convert: Any, prepare: Prepare):
        self.convert, self.kind = convert, convert.kind
        convert.track_unused = True
        self.source, self.system_prompt = prepare.source, prepare.system_prompt
        self.counter, self.max_length = prepare.counter, prepare.max_length
        self.limits = prepare.limits
        self.features = features(self.kind)

    def _with_system(self, out: dict[str, list], ok: list[int]) -> None:
        key = "messages" if "messages" in out else "prompt" if "prompt" in out else None
        if key is None or not self.system_prompt:
            return
        system = message("system", self.system_prompt)
        for i in ok:
            m = out[key][i]
            if not (m and m[0]["role"] == "system"):
                out[key][i] = [system, *(m or [])]

    def __call__(self, batch: Mapping[str, list], indices: list[int]) -> Any:
        """Returns the pass's columns for the batch as a ``pyarrow.Table``."""
        import pyarrow as pa

        out = self.convert(batch, indices)
        n = len(indices)
        ok = [i for i, r in enumerate(out["reject"]) if r is None]
        self._with_system(out, ok)
        content = [k for k in out if k not in ("meta", "reject", UNUSED, UNUSED_EXAMPLE)]
        sub = {k: [out[k][i] for i in ok] for k in content}
        rows = [dict(zip(content, values, strict=True))
                for values in zip(*(sub[k] for k in content), strict=True)]
        picked = [indices[i] for i in ok]
        counts = self.counter(sub, picked) if ok else {lengths.TOKENS: [], lengths.MEASURED: []}
        render_errors = counts.pop(lengths.RENDER_ERROR, None)
        tokens = dict(zip(map(id, rows), counts[lengths.TOKENS], strict=True))
        reasons = check_rows(rows, [None] * len(rows), self.max_length,
                             lambda rs: [tokens[id(r)] for r in rs], self.limits, render_errors)
        columns: dict[str, list] = {"meta": out["meta"], "reject": out["reject"],
                                    **{k: [None] * n for k in (*ANNOTATIONS, *counts, LINE)},
                                    UNUSED: out[UNUSED], UNUSED_EXAMPLE: out[UNUSED_EXAMPLE],
                                    LABEL: out["label"] if "label" in out else [None] * n,
                                    REASONING: [None] * n}
        if self.kind == "preference":
            columns[PAIR] = [None] * n
        for j, (i, row) in enumerate(zip(ok, rows, strict=True)):
            kind, tool, n_calls, n_tools = mix.facts(row)
            for k, value in zip(ANNOTATIONS[1:], (kind, tool, n_calls, n_tools), strict=True):
                columns[k][i] = value
            for k, values in counts.items():
                columns[k][i] = values[j]
            columns[REASONING][i] = reasoning_turns(row)
            if reasons[j] is not None:
                columns["reject"][i] = reasons[j]
                continue
            text = body(row, self.kind)
            columns[LINE][i] = line(text, out["meta"][i], self.source, kind, tool)
            if self.kind == "preference":
                text = body(row, "pairs")
                columns[PAIR][i] = line(text, out["meta"][i], self.source, kind, tool)
            columns[mix.HASH][i] = mix.content_hash(text)
        pages.release()  # the records read so far are not read again (``pages``)
        return pa.Table.from_pydict(columns, schema=self.features.arrow_schema)
