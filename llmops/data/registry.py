"""Reads one entry of a LLaMA-Factory ``dataset_info.json`` as llmops's data options.

A user moving over from LLaMA-Factory keeps their files and their registry:
``data=files data.registry=data/dataset_info.json data.name=my_set``. The entry's

- ``file_name`` (relative to the registry's folder) becomes ``data.path``;
- ``formatting`` (``alpaca``, the default, or ``sharegpt``; ``openai``) with ``ranking``
  becomes ``data.format``: alpaca, preference (its prompt from the ``prompt`` column),
  sharegpt, sharegpt_preference, or openai when the sharegpt tags are OpenAI's own (``role`` /
  ``content`` / ``user`` / ``assistant``; the reader then keeps reasoning and tool-call keys);
  an alpaca entry whose only column is ``prompt`` is pre-training text;
- ``columns`` become ``data.columns``: ``prompt`` → instruction, ``query`` → input,
  ``response`` → output, ``kto_tag`` → label, the rest by their own names (messages, system,
  tools, history, chosen, rejected, images, videos, audios);
- ``tags`` become ``data.tags``: ``role_tag`` → role, ``content_tag`` → content,
  ``user_tag`` → user, ``assistant_tag`` → assistant, ``observation_tag`` → observation,
  ``function_tag`` → function_call, ``system_tag`` → system;
- ``num_samples`` becomes the source's ``samples``.

An entry on the hub (``hf_hub_url``, ``ms_hub_url``, ``om_hub_url``, ``script_url``), a key this
does not know, or a column or tag it cannot map is an error naming it: nothing is ignored.
Pure Python.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "kto_tag": "label",
           "messages": "messages", "system": "system", "tools": "tools", "history": "history",
           "chosen": "chosen", "rejected": "rejected", "images": "images", "videos": "videos",
           "audios": "audios"}
TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user",
        "assistant_tag": "assistant", "observation_tag": "observation",
        "function_tag": "function_call", "system_tag": "system"}
HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
#: Keys that say nothing about reading a local file (a checksum, hub-only settings).
INERT_KEYS = ("file_sha1", "subset", "split", "folder")
KEYS = ("file_name", "formatting", "ranking", "columns", "tags", "num_samples", *HUB_KEYS,
        *INERT_KEYS)
OPENAI_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user",
               "assistant_tag": "assistant", "system_tag": "system"}


def _hint(name: str, names: Any) -> str:
    close = difflib.get_close_matches(name, list(names), n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def read_entry(registry: str | Path, name: str) -> dict[str, Any]:
    """Returns ``{"path", "format", "columns", "tags", "samples"}`` for one registry entry.

    Raises:
        ValueError: Naming ``data.registry`` or ``data.name``, the problem and the fix, when the
            registry cannot be read, the entry is missing, on the hub, or holds a key, format,
            column or tag llmops cannot map.
    """
    path = Path(registry).expanduser()
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"data.registry: cannot read {path} as a dataset_info.json "
                         f"({type(exc).__name__}: {exc}). Point it at LLaMA-Factory's "
                         "dataset_info.json.") from None
    if not isinstance(info, dict):
        raise ValueError(f"data.registry: {path} must hold an object of dataset entries.")
    if name not in info:
        listed = ", ".join(sorted(info)[:20]) or "none"
        raise ValueError(f"data.name: {name!r} is not an entry of {path} (entries: {listed})."
                         f"{_hint(name, info)}")
    entry = info[name]
    where = f"data.name: entry {name!r} of {path}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be an object with file_name.")
    unknown = [k for k in entry if k not in KEYS]
    if unknown:
        raise ValueError(f"{where} has keys llmops cannot map: {', '.join(unknown)} (known: "
                         f"{', '.join(KEYS)}).{_hint(unknown[0], KEYS)} Remove them, or set the "
                         "data options they stand for yourself.")
    hub = [k for k in HUB_KEYS if entry.get(k)]
    if hub:
        raise ValueError(f"{where} points at {hub[0]}={entry[hub[0]]!r}, not a local file. "
                         "Download it and give the entry a file_name, or use data=hf "
                         "data.hf_id=NAME.")
    if not isinstance(entry.get("file_name"), str) or not entry["file_name"]:
        raise ValueError(f"{where} has no file_name. Name the file (relative to {path.parent}).")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt", "openai"):
        raise ValueError(f"{where}: formatting {formatting!r} is not alpaca, sharegpt or openai.")
    columns = _mapped(entry.get("columns") or {}, COLUMNS, f"{where}: columns")
    tags = _mapped(entry.get("tags") or {}, TAGS, f"{where}: tags")
    ranking = bool(entry.get("ranking"))
    fmt = _format(formatting, ranking, entry.get("columns") or {}, entry.get("tags") or {})
    if fmt == "text":
        columns = {"text": columns.pop("instruction")}
    if fmt == "preference":  # the prompt is LLaMA-Factory's prompt column (instruction)
        columns["prompt"] = columns.pop("instruction", "instruction")
    if fmt == "openai":
        tags = {}
    samples = entry.get("num_samples")
    if samples is not None and (not isinstance(samples, int) or isinstance(samples, bool)
                                or samples < 1):
        raise ValueError(f"{where}: num_samples must be a positive integer (got {samples!r}).")
    target = (path.parent / entry["file_name"]).resolve()
    if target.is_dir() and not (target / "state.json").is_file():
        target = target / "*"  # LLaMA-Factory reads every file of a folder
    return {"path": str(target), "format": fmt, "columns": columns, "tags": tags,
            "samples": samples}


def _mapped(given: Any, names: dict[str, str], where: str) -> dict[str, str]:
    if not isinstance(given, dict):
        raise ValueError(f"{where} must be an object.")
    out = {}
    for key, value in given.items():
        if key not in names:
            raise ValueError(f"{where}: {key!r} is not one llmops can map (known: "
                             f"{', '.join(names)}).{_hint(key, names)}")
        if not isinstance(value, str) or not value:
            raise ValueError(f"{where}: {key} must be a column or tag name (got {value!r}).")
        out[names[key]] = value
    return out


def _format(formatting: str, ranking: bool, columns: dict, tags: dict) -> str:
    if formatting == "alpaca":
        if ranking:
            return "preference"
        if set(columns) == {"prompt"}:
            return "text"
        return "alpaca"
    openai = formatting == "openai" or all(tags.get(k, v) == v for k, v in OPENAI_TAGS.items()
                                           ) and bool(tags)
    if ranking:
        return "sharegpt_preference"
    return "openai" if openai else "sharegpt"
