"""Converts source rows of every known format to canonical rows (``canonical``), a batch at a time.

Contract, for the readers and the data stage:

- ``Converter(fmt, file, columns, tags)`` is a picklable callable for
  ``Dataset.map(batched=True, with_indices=True)``. Its input batch holds, per record, either
  ``__raw__`` (the record's JSON text) and ``__error__`` (why the reader could not cut it out, or
  None), as the readers produce for JSON and JSON Lines files, or the file's own columns (Parquet,
  CSV, ``save_to_disk`` folders; a column holding JSON text is parsed); ``__line__`` gives the
  1-based source line or None. ``indices`` are the 0-based record numbers inside that file.
- It returns, one entry per input record, the columns ``canonical.COLUMNS[KIND[fmt]]``; a
  record that cannot be converted keeps its ``meta`` and gets a ``reject`` (its other columns are
  None). Conversion only reshapes: whether calls match their tools is ``toolcheck``'s business.
- ``columns`` renames source columns (keys of ``DEFAULT_COLUMNS``) and ``tags`` renames ShareGPT's
  keys and role names (keys of ``DEFAULT_TAGS``), as LLaMA-Factory's dataset_info does; both only
  hold overrides, the defaults live here.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from llmops.data import canonical as c
from llmops.data import hermes, jsontext, parts, xlam
from llmops.data.limits import Limits
from llmops.data.names import DEFAULT_COLUMNS, DEFAULT_TAGS, FORMATS, KIND
from llmops.data.sharegpt import sharegpt_preference, sharegpt_to_messages
from llmops.errors import LlmopsError

RAW, ERROR, LINE, FILE = "__raw__", "__error__", "__line__", "__file__"
#: With ``Converter.track_unused``: per row, the columns and message keys it did not read; per
#: batch, the first value seen of each (JSON text of ``{name: value}``, on the row it was seen).
UNUSED, UNUSED_EXAMPLE = "_unused", "_unused_example"
_CODED = re.compile(r"\[(\w+)\] (.*)", re.DOTALL)


def reader_error(code: str, message: str) -> str:
    """Returns a reader's ``__error__`` text that rejects the record with its own code (plain
    error text rejects it as ``invalid_json``)."""
    return f"[{code}] {message}"


class FormatError(LlmopsError):
    """A format, a column mapping or a file's rows cannot be understood."""


def _check_names(given: Mapping[str, str] | None, allowed: Mapping[str, str], key: str) -> dict:
    given = dict(given or {})
    for name, value in given.items():
        if name not in allowed:
            close = difflib.get_close_matches(name, allowed, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise FormatError(
                f"{key}.{name}: not a known name (allowed: {', '.join(allowed)}).{hint}"
            )
        if not isinstance(value, str) or not value:
            raise FormatError(f"{key}.{name}: must be a non-empty string (got {value!r}).")
    return {**allowed, **given}


def _text(row: dict[str, Any], col: str, required: bool = True) -> str | None:
    value = row.get(col)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        what = "missing" if value is None else f"{value!r}" if isinstance(value, str) else (
            type(value).__name__)
        raise c.Rejected(
            "missing_field" if value is None else "bad_field",
            col,
            f"must be a non-empty string (got {what}). Fill it, or map another column with "
            f"data.columns.",
        )
    return value


def json_value(row: dict[str, Any], col: str, max_depth: int | None = None) -> Any:
    """Returns ``row[col]``, parsed when it is JSON text of a list (CSV columns hold text)."""
    value = row.get(col)
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return jsontext.loads(value, max_depth)
        except jsontext.TooDeep as exc:
            raise c.Rejected("too_deep", col, f"holds JSON text {exc.msg}; it is not parsed. "
                             "Flatten it, or raise limits.json_depth.") from None
        except json.JSONDecodeError as exc:
            raise c.Rejected("bad_field", col, f"holds text that is not JSON ({exc.msg}).") from exc
    return value


#: Message keys the OpenAI reader uses (others are listed as unused in the data report).
MESSAGE_KEYS = frozenset({"role", "content", "tool_calls", "tool_call_id", "name", "weight",
                          "loss_weight", "reasoning_content", "reasoning", "thinking",
                          "function_call"})
#: OpenAI's other role names: developer is the system turn, function a tool result.
ROLE_ALIASES = {"developer": "system", "function": "tool"}


def openai_messages(value: Any, path: str, unused: dict[str, Any] | None = None
                    ) -> list[dict[str, Any]]:
    """Normalises a list of OpenAI messages (see ``canonical``): content parts, reasoning
    (``reasoning_content``, ``reasoning``, reasoning parts, a leading ``<think>`` block),
    calls (``tool_calls``, call parts, the legacy ``function_call``), ``weight`` (or
    ``loss_weight``, as LLaMA-Factory's and Volcengine's sets spell it) and the roles
    ``developer`` (system) and ``function`` (tool). Keys it does not read go to ``unused``."""
    if not isinstance(value, list):
        raise c.Rejected("bad_messages", path, f"must be a list of messages (got "
                         f"{'null' if value is None else type(value).__name__}).")
    out = []
    pending: list[dict[str, Any]] = []  # calls not yet answered, oldest first
    for i, m in enumerate(value):
        where = f"{path}[{i}]"
        if not isinstance(m, dict):
            raise c.Rejected("bad_message", where, "must be an object with 'role' and 'content'.")
        role = m.get("role")
        role = ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
        if role not in c.ROLES:
            raise c.Rejected("unknown_role", f"{where}.role", f"{role!r} is not one of "
                             f"{', '.join(c.ROLES)} (or developer, function). Rename the role.")
        extra = len(m) > 2 or "content" not in m
        if unused is not None and extra and not m.keys() <= MESSAGE_KEYS:
            for key in m:
                if key not in MESSAGE_KEYS:
                    parts.note_unused(unused, f"{path}[].{key}", m[key])
        calls = m.get("tool_calls")
        if calls is not None and not isinstance(calls, list):
            raise c.Rejected("bad_tool_call", f"{where}.tool_calls", "must be a list of calls.")
        reasoning = m.get("reasoning_content")
        if reasoning is None and extra:
            reasoning = m.get("reasoning", m.get("thinking"))
        text = m.get("content")
        if reasoning is None and type(text) is str and "<" not in text:
            trace, part_calls = None, parts.NO_CALLS  # plain text (most messages)
        else:
            text, trace, part_calls = parts.assistant_parts(role, text, where, i, reasoning)
        listed = [c.tool_call(x, f"{where}.tool_calls[{k}]") for k, x in enumerate(calls)] \
            if calls else []
        legacy = m.get("function_call") if extra else None
        if isinstance(legacy, dict) and role == "assistant":
            listed.append(c.tool_call(legacy, f"{where}.function_call", f"call_{i}_legacy"))
        if part_calls:
            listed += part_calls
        if listed:
            pending.extend(listed)
        ident = m.get("tool_call_id") if extra else None
        ident = ident if isinstance(ident, str) else None
        name = m.get("name") if extra else None
        name = name if isinstance(name, str) else None
        if role == "tool":
            call = _answered(pending, ident, name)
            if call is not None and ident is None and name is None:
                # a result without an id (typed-part sets) answers the oldest open call
                ident, name = call["id"], call["function"]["name"]
        weight_key = "weight" if not extra or "loss_weight" not in m else "loss_weight"
        out.append(c.message(role, text, listed or None, ident, name,
                             c.weight(m.get(weight_key), f"{where}.{weight_key}"), trace))
    return out


def _answered(pending: list[dict[str, Any]], ident: str | None, name: str | None
              ) -> dict[str, Any] | None:
    """Removes and returns the open call a tool message answers: by id, by name, else the
    oldest (None when none is open)."""
    for call in pending:
        if (ident is not None and call["id"] == ident) or (
                ident is None and name is not None and call["function"]["name"] == name):
            pending.remove(call)
            return call
    if ident is None and name is None and pending:
        return pending.pop(0)
    return None


def _turns(value: Any, col: str, role: str) -> list[dict[str, Any]]:
    """Returns a prompt/chosen/rejected value (a string or a message list) as messages."""
    if isinstance(value, str) and value.strip():
        return [_text_message(role, value, col)]
    if isinstance(value, list) and value:
        return openai_messages(value, col)
    raise c.Rejected("bad_field", col, "must be a non-empty string or a list of messages.")


def _text_message(role: str, text: str | None, path: str) -> dict[str, Any]:
    """Returns a message from plain text (Alpaca, completion, prompt strings): an assistant's
    leading ``<think>`` block is its reasoning; image/audio/video placeholders are refused."""
    answer, trace, _ = parts.assistant_parts(role, text, path, 0, key=None)
    return c.message(role, answer, reasoning_content=trace)


def _system(row: dict[str, Any], cols: dict[str, str]) -> list[dict[str, Any]]:
    value = _text(row, cols["system"], required=False)
    return [c.message("system", value)] if value and value.strip() else []


def _chat(fmt: str, row: dict[str, Any], cols: dict[str, str], tags: dict[str, str],
          unused: dict[str, Any] | None = None, max_depth: int | None = None) -> dict:
    if fmt == "openai":
        return {"messages": openai_messages(json_value(row, cols["messages"]), cols["messages"],
                                            unused)}
    if fmt == "sharegpt":
        col = _sharegpt_column(row, cols)
        return {"messages": _system(row, cols) + sharegpt_to_messages(
            json_value(row, col), col, tags, unused=unused)}
    if fmt == "hermes":  # ShareGPT turns or OpenAI messages, calls and tools in their text
        col = _sharegpt_column(row, cols)
        turns = json_value(row, col)
        first = turns[0] if isinstance(turns, list) and turns else None
        messages = _system(row, cols) + sharegpt_to_messages(turns, col, tags, unused=unused) \
            if isinstance(first, dict) and tags["role"] in first else openai_messages(
                turns, col, unused)
        given = c.tools_json(json_value(row, cols["tools"], max_depth), cols["tools"], max_depth)
        return hermes.lift(messages, col, given, max_depth)
    if fmt == "xlam":
        return xlam.read_row(row, cols, max_depth)
    if fmt == "completion":
        return {"messages": [_text_message("user", _text(row, cols["prompt"]), cols["prompt"]),
                             _text_message("assistant", _text(row, cols["completion"]),
                                           cols["completion"])]}
    user = _text(row, cols["instruction"])
    extra = _text(row, cols["input"], required=False)
    history = json_value(row, cols["history"]) or []
    if not isinstance(history, list) or not all(
        isinstance(t, list) and len(t) == 2 and all(isinstance(s, str) for s in t)
        for t in history
    ):
        raise c.Rejected("bad_field", cols["history"],
                         "must be a list of [instruction, answer] string pairs.")
    messages = _system(row, cols)
    for k, (q, a) in enumerate(history):
        messages += [_text_message("user", q, f"{cols['history']}[{k}][0]"),
                     _text_message("assistant", a, f"{cols['history']}[{k}][1]")]
    if extra and extra.strip():
        user = f"{user}\n\n{extra}"
    return {"messages": messages + [_text_message("user", user, cols["instruction"]),
                                    _text_message("assistant", _text(row, cols["output"]),
                                                  cols["output"])]}


#: Columns that carry images, audio or video (after data.columns renames the first three).
MODALITY_COLUMNS: dict[str, str] = {"images": "image", "videos": "video", "audios": "audio",
                                    "image": "image", "video": "video", "audio": "audio"}
#: Canonical fields each format reads (their source columns count as used).
FIELDS: dict[str, tuple[str, ...]] = {
    "openai": ("messages", "tools", "label"),
    "sharegpt": ("messages", "system", "tools", "label"),
    "hermes": ("messages", "system", "tools", "label"),
    "xlam": ("query", "answers", "tools", "label"),
    "alpaca": ("instruction", "input", "output", "system", "history", "tools", "label"),
    "completion": ("prompt", "completion", "tools", "label"),
    "text": ("text",),
    "preference": ("prompt", "chosen", "rejected", "system", "tools"),
    "sharegpt_preference": ("messages", "system", "chosen", "rejected", "tools"),
}
LABEL_SPELLINGS = {"true": True, "false": False}


def label_value(value: Any, path: str) -> bool | None:
    """Returns a row's label: True (desirable), False (undesirable) or None (unlabelled).

    Only JSON booleans and the text "true" / "false" (any case; CSV holds text) are labels:
    a number or any other text is a reject (``bad_label``), never a guess.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in LABEL_SPELLINGS:
        return LABEL_SPELLINGS[value.strip().lower()]
    raise c.Rejected("bad_label", path, f"must be true (a desirable answer) or false (an "
                     f"undesirable one) (got {value!r}). Fix it, or point data.columns.label at "
                     "the column that holds the label.")


def _label_column(row: dict[str, Any], cols: dict[str, str]) -> str:
    if cols["label"] == DEFAULT_COLUMNS["label"] and row.get("label") is None and (
            row.get("kto_tag") is not None):
        return "kto_tag"
    return cols["label"]


@functools.lru_cache(maxsize=64)
def _modality_columns(images: str, videos: str, audios: str) -> frozenset[str]:
    return frozenset({images, videos, audios, "image", "video", "audio"})


def _refuse_modalities(row: dict[str, Any], cols: dict[str, str]) -> None:
    if not row.keys() & _modality_columns(cols["images"], cols["videos"], cols["audios"]):
        return
    for name, kind in MODALITY_COLUMNS.items():
        col = cols.get(name, name)
        value = row.get(col)
        if value is None or value == [] or value == "" or value == {}:
            continue
        n = len(value) if isinstance(value, list) else 1
        raise parts.unsupported(kind, col, f"{n} {kind}{'s' if n != 1 else ''} "
                                f"(column {col!r})")


def _used(fmt: str, row: dict[str, Any], cols: dict[str, str]) -> frozenset[str]:
    extra = (_sharegpt_column(row, cols) if fmt in ("sharegpt", "hermes", "sharegpt_preference")
             else None, _label_column(row, cols) if "label" in FIELDS[fmt] else None)
    return _used_columns(fmt, tuple(cols.items()), extra)


@functools.lru_cache(maxsize=256)
def _used_columns(fmt: str, cols: tuple[tuple[str, str], ...], extra: tuple) -> frozenset[str]:
    names = dict(cols)
    used = {names[f] for f in FIELDS[fmt]} | {names.get(n, n) for n in MODALITY_COLUMNS}
    return frozenset(used | {e for e in extra if e is not None})


def _sharegpt_column(row: dict[str, Any], cols: dict[str, str]) -> str:
    if cols["messages"] != DEFAULT_COLUMNS["messages"] or "conversations" not in row:
        return cols["messages"]
    return "conversations"


def lone_surrogate(value: Any, where: str = "$") -> c.Rejected | None:
    """Finds text that is not valid Unicode (a lone surrogate such as JSON's "\\ud800"), which
    Arrow cannot store; returns the reject naming where the first one is, else None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            char = value[exc.start].encode("unicode_escape").decode("ascii")
            return c.Rejected("not_unicode", where, f"holds a lone surrogate {char} at character "
                              f"{exc.start}, which is not valid Unicode text. Fix or remove it.")
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(
        value, list) else ()
    for key, item in items:
        found = lone_surrogate(key, f"a key of {where}") if isinstance(key, str) else None
        path = f"{where}[{key}]" if isinstance(key, int) else (
            str(key) if where == "$" else f"{where}.{key}")
        found = found or lone_surrogate(item, path)
        if found:
            return found
    return None


def convert_row(fmt: str, row: Any, cols: dict[str, str], tags: dict[str, str],
                max_depth: int | None = None, unused: dict[str, Any] | None = None) -> dict:
    """Converts one parsed source row to the canonical columns of its kind (no ``meta``).

    Args:
        unused: Filled with the columns and message keys the format does not read (name: its
            first value); None not to look.

    Raises:
        canonical.Rejected: If the row does not fit ``fmt``, or holds images, audio or video.
    """
    if not isinstance(row, dict):
        raise c.Rejected("not_object", "$", f"must be a JSON object (got {type(row).__name__}).")
    kind = KIND[fmt]
    if unused is not None:
        used = _used(fmt, row, cols)
        for key, value in row.items():
            if key not in used:
                parts.note_unused(unused, key, value)
    if kind == "text":
        _refuse_modalities(row, cols)
        return {"text": _text(row, cols["text"])}
    _refuse_modalities(row, cols)
    tools = c.tools_json(json_value(row, cols["tools"], max_depth), cols["tools"], max_depth) \
        if fmt not in ("xlam", "hermes") else None
    if kind == "chat":
        label_col = _label_column(row, cols)
        out = {"tools": tools, **_chat(fmt, row, cols, tags, unused, max_depth)}
        out["label"] = label_value(row.get(label_col), label_col)
        return out
    if fmt == "sharegpt_preference":
        col = _sharegpt_column(row, cols)
        prompt, chosen, rejected = sharegpt_preference(
            _system(row, cols), json_value(row, col), col, row.get(cols["chosen"]),
            row.get(cols["rejected"]), (cols["chosen"], cols["rejected"]), tags)
    else:
        prompt = _system(row, cols) + _turns(json_value(row, cols["prompt"]), cols["prompt"],
                                             "user")
        chosen = _turns(json_value(row, cols["chosen"]), cols["chosen"], "assistant")
        rejected = _turns(json_value(row, cols["rejected"]), cols["rejected"], "assistant")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "tools": tools}


def source_rows(batch: Mapping[str, list], limits: Limits | None = None
                ) -> Iterator[tuple[Any, str | c.Rejected | None]]:
    """Yields each record of a batch as ``(value, error)``; value None when it cannot be read.

    The error is text (the record is not JSON), or the ``Rejected`` it is under its own code:
    a reader's coded error (``reader_error``), a record over ``limits.row_bytes`` or nested
    deeper than ``limits.json_depth`` (never parsed).
    """
    if RAW in batch:
        for raw, error in zip(batch[RAW], batch[ERROR], strict=True):
            if error is not None:
                coded = _CODED.fullmatch(error)
                yield None, c.Rejected(coded[1], "$", coded[2]) if coded else error
                continue
            if limits is not None and len(raw) > limits.row_bytes // 4 and len(
                    raw.encode("utf-8", "surrogatepass")) > limits.row_bytes:
                yield None, too_large(limits.row_bytes)
                continue
            try:
                yield jsontext.loads(raw, limits and limits.json_depth), None
            except jsontext.TooDeep as exc:
                yield None, c.Rejected("too_deep", "$", f"is {exc.msg}; it is not parsed. "
                                       "Flatten the row, or raise limits.json_depth.")
            except json.JSONDecodeError as exc:
                yield None, f"invalid JSON: {exc.msg} (column {exc.colno})"
        return
    names = [k for k in batch if k not in (LINE, FILE)]
    for values in zip(*(batch[k] for k in names), strict=True):
        yield dict(zip(names, values, strict=True)), None


def _size(row: Any) -> int:
    """Returns a record's size as JSON text in bytes (0 when it has no such form)."""
    try:
        return len(orjson.dumps(row))
    except (orjson.JSONEncodeError, TypeError):
        return 0


def _example_text(values: dict[str, Any]) -> str:
    """Returns unused values as JSON text, each cut to 200 characters of its own JSON."""
    short = {}
    for name, value in values.items():
        try:
            text = orjson.dumps(value).decode()
        except (orjson.JSONEncodeError, TypeError):
            text = json.dumps(str(value))
        short[name] = value if len(text) <= 200 else text[:200] + "..."
    return json.dumps(short, ensure_ascii=False, default=str)


def too_large(row_bytes: int) -> c.Rejected:
    """Returns the reject of a record longer than ``limits.row_bytes``."""
    return c.Rejected("row_too_large", "$", f"is longer than limits.row_bytes={row_bytes} bytes; "
                      "it is not parsed. Split or shorten the row, or raise limits.row_bytes.")


class Converter:
    """Converts batches of one file's records to canonical rows (see the module docstring)."""

    def __init__(self, fmt: str, file: str, columns: Mapping[str, str] | None = None,
                 tags: Mapping[str, str] | None = None, limits: Limits | None = None,
                 files: list[str] | None = None, starts: list[int] | None = None):
        if fmt not in FORMATS:
            close = difflib.get_close_matches(str(fmt), FORMATS, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise FormatError(f"data.format: {fmt!r} is not one of auto, {', '.join(FORMATS)}."
                              f"{hint}")
        self.fmt, self.kind, self.file = fmt, KIND[fmt], file
        self.cols = _check_names(columns, DEFAULT_COLUMNS, "data.columns")
        self.tags = _check_names(tags, DEFAULT_TAGS, "data.tags")
        self.limits, self.files, self.starts = limits, files, starts
        self.track_unused = False

    def __call__(self, batch: Mapping[str, list], indices: list[int]) -> dict[str, list]:
        """Returns the canonical columns of the batch's records, a reject for each that fails."""
        out: dict[str, list] = {name: [] for name in c.COLUMNS[self.kind]}
        lines = batch.get(LINE) or [None] * len(indices)
        if self.files and FILE in batch:  # records of several files: each row's own file
            files = [self.files[k] for k in batch[FILE]]
            rows = [i - self.starts[k] for i, k in zip(indices, batch[FILE], strict=True)]
        else:
            files, rows = [self.file] * len(indices), indices
        # Only JSON text can hold a lone surrogate (as a \ud800-\udfff escape); Arrow columns
        # are valid UTF-8, so only records whose text has such an escape are walked.
        raws = batch.get(RAW) or [None] * len(indices)
        if self.track_unused:
            out[UNUSED], out[UNUSED_EXAMPLE] = [], []
            examples: set[str] = set()
        for (row, error), index, line, raw, file in zip(
                source_rows(batch, self.limits), rows, lines, raws, files, strict=True):
            out["meta"].append({"file": file, "line": line, "row": index + 1,
                                "format": self.fmt})
            unused: dict[str, Any] | None = {} if self.track_unused else None
            try:
                if isinstance(error, c.Rejected):
                    raise error
                if error is not None:
                    raise c.Rejected("invalid_json", "$", f"{error}. Fix the JSON.")
                if raw is None and self.limits is not None and row is not None and (
                        _size(row) > self.limits.row_bytes):  # a Parquet/CSV/dataset record
                    raise too_large(self.limits.row_bytes)
                if raw is not None and ("\\ud" in raw or "\\uD" in raw):
                    bad_text = lone_surrogate(row)
                    if bad_text is not None:
                        raise bad_text
                values, reject = convert_row(self.fmt, row, self.cols, self.tags,
                                             self.limits and self.limits.json_depth,
                                             unused), None
            except c.Rejected as exc:
                values, reject = {}, exc.to_dict()
            except RecursionError:  # nested deeper than Python recurses (json_depth allows it)
                values, reject = {}, c.Rejected(
                    "too_deep", "$", "is nested too deep for Python to convert. Flatten the row, "
                    "or lower limits.json_depth so such rows are refused before parsing."
                ).to_dict()
            except (TypeError, AttributeError, KeyError, IndexError, ValueError) as exc:
                # a shape no check foresaw: still one reject, never the whole run
                values, reject = {}, c.Rejected(
                    "unreadable_row", "$", f"could not be read as {self.fmt} "
                    f"({type(exc).__name__}: {str(exc)[:200]}). Fix the row, or set data.format."
                ).to_dict()
            for name in c.COLUMNS[self.kind]:
                if name not in ("meta", "reject"):
                    out[name].append(values.get(name))
            out["reject"].append(reject)
            if self.track_unused:
                names = sorted(unused) if reject is None and unused else None
                out[UNUSED].append(names)
                new = {n: unused[n] for n in names or () if n not in examples}
                examples.update(new)
                out[UNUSED_EXAMPLE].append(_example_text(new) if new else None)
        return out
