"""Reads a user's dataset rows, checks each one, and normalises them all to chat form.

Three row formats are understood:

- chat: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``;
  the last message must be the assistant's.
- instruct: ``{"instruction": str, "input": str (optional), "output": str}``.
- completion: ``{"prompt": str, "completion": str}``.

Every row becomes ``{"messages": [...], "meta": {"source": ..., "line": n, ...}}`` (see
``llmops/stages/CONTRACT.md``). A row that fails a check is not fatal: it is collected as a
``Reject`` with its 1-based line number and the reason, and the rest goes on. Pure Python.
"""

from __future__ import annotations

import json
import os
import stat
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmops.errors import LlmopsError

FORMATS: tuple[str, ...] = ("chat", "instruct", "completion")
ROLES: tuple[str, ...] = ("system", "user", "assistant")

# Keys that point to a format. A row whose keys meet exactly one of these sets has that format.
_SIGNATURES: dict[str, frozenset[str]] = {
    "chat": frozenset({"messages"}),
    "instruct": frozenset({"instruction", "input", "output"}),
    "completion": frozenset({"prompt", "completion"}),
}
_EXPECTED = (
    "'messages' (chat), 'instruction' + 'output' (instruct) or 'prompt' + 'completion' (completion)"
)


class FormatError(LlmopsError):
    """The rows' format cannot be decided or is not one llmops knows."""


@dataclass(frozen=True)
class Reject:
    """One row left out: its 1-based line (or row) number and why."""

    line: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """Returns the reject as ``{"line": ..., "reason": ...}``."""
        return {"line": self.line, "reason": self.reason}


@dataclass
class LoadResult:
    """The outcome of reading rows: the valid ones in chat form, the rejects, and the format."""

    format: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    n_read: int = 0


def not_regular(path: str | Path) -> str | None:
    """Tells what is at path when it is there but is not a regular file, without opening it.

    Opening a FIFO would block until a writer comes, so only ``os.stat`` looks (links followed).

    Returns:
        None for a regular file or when nothing is there, else e.g. ``"a folder"``,
        ``"a FIFO (named pipe)"``.
    """
    try:
        mode = os.stat(Path(path).expanduser()).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"))
    return next((kind for test, kind in kinds if test(mode)), "not a file")


def parse_lines(lines: Iterable[bytes | str]) -> tuple[list[tuple[int, Any]], list[Reject], int]:
    """Parses JSONL lines, skipping blank ones.

    Args:
        lines: The file's lines, as bytes (decoded as UTF-8 here) or str.

    Returns:
        ``(records, rejects, n_read)``: ``(line, value)`` for each line that parsed, a reject for
        each that did not (not UTF-8, bad JSON), and the number of non-blank lines. A UTF-8 byte
        order mark opening line 1 is not part of the row.
    """
    records: list[tuple[int, Any]] = []
    rejects: list[Reject] = []
    n_read = 0
    for number, raw in enumerate(lines, start=1):
        if isinstance(raw, bytes):
            try:  # utf-8-sig on line 1: a byte order mark at the start of the file is dropped
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                n_read += 1
                rejects.append(Reject(number, f"not UTF-8 text (byte {exc.start})"))
                continue
        else:
            text = raw.removeprefix("\ufeff") if number == 1 else raw
        if not text.strip():
            continue
        n_read += 1
        try:
            records.append((number, json.loads(text.strip())))
        except json.JSONDecodeError as exc:
            rejects.append(Reject(number, f"invalid JSON: {exc.msg} (column {exc.colno})"))
    return records, rejects, n_read


def detect_row_format(obj: Any) -> str | None:
    """Returns the one format whose keys ``obj`` carries, or None when none or several match."""
    if not isinstance(obj, dict):
        return None
    matches = [name for name, keys in _SIGNATURES.items() if keys & obj.keys()]
    return matches[0] if len(matches) == 1 else None


def autodetect(records: list[tuple[int, Any]]) -> str:
    """Decides the format of a file from its parsed rows, by majority of the rows that tell.

    Args:
        records: ``(line, value)`` pairs as returned by ``parse_lines``.

    Returns:
        One of ``FORMATS``.

    Raises:
        FormatError: If no row tells its format (naming the first row's line and keys), or two
            formats are equally common (naming a line of each).
    """
    votes: Counter[str] = Counter()
    first_line: dict[str, int] = {}
    for line, obj in records:
        fmt = detect_row_format(obj)
        if fmt is not None:
            votes[fmt] += 1
            first_line.setdefault(fmt, line)
    if not votes:
        if not records:
            raise FormatError("data.format: no JSON rows to detect the format from.")
        line, obj = records[0]
        keys = ", ".join(sorted(obj)) if isinstance(obj, dict) else type(obj).__name__
        raise FormatError(
            f"data.format: cannot tell the format of line {line} (keys: {keys}). "
            f"Expected {_EXPECTED}. Rename the keys, or set data.format to one of "
            f"{', '.join(FORMATS)}."
        )
    ranked = votes.most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        (a, n), (b, _) = ranked[0], ranked[1]
        raise FormatError(
            f"data.format: {n} rows look like {a} (e.g. line {first_line[a]}) and {n} like {b} "
            f"(e.g. line {first_line[b]}). Split the file, or set data.format={a} or {b}."
        )
    return ranked[0][0]


def _check_text(obj: dict[str, Any], key: str, required: bool = True) -> str | None:
    if key not in obj or (obj[key] is None and not required):
        return f"missing key '{key}'" if required else None
    value = obj[key]
    if not isinstance(value, str):
        return f"'{key}' must be a string (got {type(value).__name__})"
    if required and not value.strip():
        return f"'{key}' is empty"
    return None


def _check_chat(obj: dict[str, Any]) -> str | None:
    messages = obj.get("messages")
    if "messages" not in obj:
        return "missing key 'messages'"
    if not isinstance(messages, list):
        return f"'messages' must be a list (got {type(messages).__name__})"
    if not messages:
        return "'messages' is empty"
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            return f"{where} must be an object with 'role' and 'content' (got {type(msg).__name__})"
        for key in ("role", "content"):
            if key not in msg:
                return f"{where} is missing key '{key}'"
        role, content = msg["role"], msg["content"]
        if role not in ROLES:
            return f"{where}.role {role!r} is not one of {', '.join(ROLES)}"
        if role == "system" and i != 0:
            return f"{where}: a system message may only come first"
        if not isinstance(content, str):
            return f"{where}.content must be a string (got {type(content).__name__})"
        if not content.strip():
            return f"{where}.content is empty"
    if messages[-1]["role"] != "assistant":
        return f"last message must be the assistant's (got {messages[-1]['role']!r})"
    if not any(m["role"] == "user" for m in messages):
        return "no user message"
    return None


def _lone_surrogate(value: Any, where: str = "") -> str | None:
    """Finds text that is not valid Unicode (a lone surrogate such as JSON's "\\ud800").

    Returns:
        None when every string (keys included) encodes as UTF-8, else where the first bad one is.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            char = value[exc.start].encode("unicode_escape").decode("ascii")
            return (f"{where or 'the row'} holds a lone surrogate {char} at character "
                    f"{exc.start}, which is not valid Unicode text; fix or remove it")
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = (_lone_surrogate(key, f"a key of {where or 'the row'}")
                     or _lone_surrogate(item, f"{where}.{key}" if where else str(key)))
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _lone_surrogate(item, f"{where}[{i}]")
            if found:
                return found
    return None


def check_row(obj: Any, fmt: str) -> str | None:
    """Checks one parsed row against a format.

    Args:
        obj: The parsed JSON value.
        fmt: One of ``FORMATS``.

    Returns:
        None when the row is valid, else the reason it is not, e.g. ``"missing key 'output'"``.
    """
    if not isinstance(obj, dict):
        return f"expected a JSON object (got {type(obj).__name__})"
    bad_text = _lone_surrogate(obj)
    if bad_text:
        return bad_text
    seen = detect_row_format(obj)
    if seen is not None and seen != fmt:
        keys = ", ".join(sorted(obj))
        return f"row is {seen} format (keys: {keys}) but the data is {fmt}"
    if fmt == "chat":
        return _check_chat(obj)
    if fmt == "instruct":
        return (
            _check_text(obj, "instruction")
            or _check_text(obj, "input", required=False)
            or _check_text(obj, "output")
        )
    return _check_text(obj, "prompt") or _check_text(obj, "completion")


def to_chat(
    obj: dict[str, Any], fmt: str, system_prompt: str | None = None, source: str = "jsonl"
) -> dict[str, Any]:
    """Converts one valid row to chat form.

    instruct becomes user = instruction (+ "\\n\\n" + input when input is non-empty), assistant =
    output; completion becomes user = prompt, assistant = completion. ``system_prompt``, when
    given, is prepended unless the row already opens with a system message. Messages keep only
    ``role`` and ``content``. A row's own ``meta`` object is kept, ``source`` added if missing.
    """
    if fmt == "chat":
        messages = [{"role": m["role"], "content": m["content"]} for m in obj["messages"]]
    elif fmt == "instruct":
        user = obj["instruction"]
        if obj.get("input") and obj["input"].strip():
            user = f"{user}\n\n{obj['input']}"
        messages = [
            {"role": "user", "content": user},
            {"role": "assistant", "content": obj["output"]},
        ]
    else:
        messages = [
            {"role": "user", "content": obj["prompt"]},
            {"role": "assistant", "content": obj["completion"]},
        ]
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    meta = dict(obj["meta"]) if isinstance(obj.get("meta"), dict) else {}
    meta.setdefault("source", source)
    return {"messages": messages, "meta": meta}


def normalise_records(
    records: list[tuple[int, Any]],
    fmt: str = "auto",
    system_prompt: str | None = None,
    source: str = "jsonl",
) -> LoadResult:
    """Checks parsed rows and converts the valid ones to chat form.

    Args:
        records: ``(line, value)`` pairs; ``line`` is 1-based and ends up in each row's
            ``meta.line`` and in its reject.
        fmt: ``"auto"`` or one of ``FORMATS``.
        system_prompt: Prepended to rows that have no system message; None adds none.
        source: Written to ``meta.source`` of rows that do not name one.

    Returns:
        A ``LoadResult`` (``n_read`` is ``len(records)``); with no records at all its format is
        ``fmt``, or ``"unknown"`` for ``"auto"``.

    Raises:
        FormatError: If ``fmt`` is unknown, or ``"auto"`` cannot decide (see ``autodetect``).
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise FormatError(
            f"data.format: {fmt!r} is not one of auto, {', '.join(FORMATS)}. "
            "Use data.format=auto to detect it."
        )
    if not records:
        return LoadResult(format="unknown" if fmt == "auto" else fmt)
    resolved = autodetect(records) if fmt == "auto" else fmt
    result = LoadResult(format=resolved, n_read=len(records))
    for line, obj in records:
        reason = check_row(obj, resolved)
        if reason is not None:
            result.rejects.append(Reject(line, reason))
            continue
        row = to_chat(obj, resolved, system_prompt, source)
        row["meta"].setdefault("line", line)
        result.rows.append(row)
    return result


def read_jsonl(
    path: str | Path,
    fmt: str = "auto",
    system_prompt: str | None = None,
    source: str = "jsonl",
) -> LoadResult:
    """Reads a JSONL file, checks every line, and normalises the valid rows to chat form.

    Blank lines are skipped and not counted. Lines that are not UTF-8 or not JSON are rejected
    alongside rows that fail the format's checks; rejects come back sorted by line.

    Args:
        path: The JSONL file.
        fmt: ``"auto"`` (decide from the rows) or one of ``FORMATS``.
        system_prompt: Prepended to rows that have no system message; None adds none.
        source: Written to ``meta.source`` of rows that do not name one.

    Returns:
        A ``LoadResult`` whose ``n_read`` counts the non-blank lines.

    Raises:
        FormatError: If ``fmt`` is unknown, or ``"auto"`` cannot decide.
        OSError: If the file cannot be read.
    """
    with open(path, "rb") as handle:
        records, bad_lines, n_read = parse_lines(handle)
    result = normalise_records(records, fmt, system_prompt, source)
    result.rejects = sorted(bad_lines + result.rejects, key=lambda r: r.line)
    result.n_read = n_read
    return result
