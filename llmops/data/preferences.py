"""Preference pairs for DPO: derived from SFT rows, or read from the user's files.

A pair is ``{"prompt": [messages], "chosen": [assistant], "rejected": [assistant], "meta": {...}}``
(TRL's conversational preference format). Pure Python and deterministic for a seed.

Derivation from a chat row whose answer is a ``tool_calls`` entry rotates over plausible mistakes:
``legacy_v1`` (the old ``{"action","params"}`` schema the tiny base was pre-trained on),
``wrong_tool``, ``wrong_argument`` (one argument value changed), ``malformed_json`` and
``false_refusal``. A must-refuse row gets a ``complied`` call; any other row gets another row's
answer (``other_answer``).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

from llmops.data import task_api
from llmops.data.canonical import to_openai_row

CALL_KINDS = ("legacy_v1", "wrong_tool", "wrong_argument", "malformed_json", "false_refusal")
DERIVATION = {
    "legacy_v1": "the same call in the legacy v1 schema {\"action\", \"params\"}",
    "wrong_tool": "the same arguments sent to another tool",
    "wrong_argument": "one argument value changed (id, title, date, priority or status)",
    "malformed_json": "the correct call with the closing brace of its arguments cut off",
    "false_refusal": "the refusal sentence instead of the call",
    "complied": "a create_task call instead of the refusal the request needed",
    "other_answer": "another row's answer (rows that are not tool calls)",
}


def _other(rng: random.Random, value: Any, pool: tuple) -> Any:
    return rng.choice([v for v in pool if v != value])


def _wrong_argument(rng: random.Random, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    args = dict(args)
    if not args:  # list_tasks with no filter: add one
        return {"status": rng.choice(("open", "done"))}
    key = rng.choice(sorted(args))
    value = args[key]
    if key == "task_id":
        args[key] = value + rng.choice((1, 2, 10)) if value < 990 else value - 7
    elif key == "title":
        args[key] = _other(rng, value, task_api._TITLES)
    elif key == "priority":
        args[key] = _other(rng, value, task_api._PRIORITIES)
    elif key == "status":
        args[key] = _other(rng, value, task_api._STATUSES)
    elif key == "due":
        args[key] = value[:-2] + f"{(int(value[-2:]) % 28) + 1:02d}"
    else:
        args.pop(key)
    return args


def _calls(tool: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": None,
            "tool_calls": [task_api.tool_call(tool, args, "call_0")]}


def rejected_for(row: dict[str, Any], rng: random.Random, kind: str) -> dict[str, Any]:
    """Returns a plausible wrong assistant message of the given kind for a row whose answer is a
    ``tool_calls`` entry: another call, a call whose arguments are cut-off JSON
    (``malformed_json``), or text (``legacy_v1``, ``false_refusal``)."""
    fn = row["messages"][-1]["tool_calls"][0]["function"]
    tool, args = fn["name"], json.loads(fn["arguments"])
    if kind == "legacy_v1":
        return {"role": "assistant", "content": task_api.format_call(tool, args, schema="v1")}
    if kind == "wrong_tool":
        return _calls(_other(rng, tool, task_api.TOOLS), args)
    if kind == "wrong_argument":
        return _calls(tool, _wrong_argument(rng, tool, args))
    if kind == "malformed_json":
        cut = _calls(tool, args)
        cut["tool_calls"][0]["function"]["arguments"] = fn["arguments"][:-1]
        return cut
    return {"role": "assistant", "content": task_api.REFUSAL}


def _pair(row: dict[str, Any], chosen: dict, rejected: dict, meta: dict[str, Any]
          ) -> dict[str, Any]:
    pair = {"prompt": row["messages"][:-1], "chosen": [chosen], "rejected": [rejected],
            "meta": meta}
    if row.get("tools"):
        pair["tools"] = row["tools"]
    return pair


def derive(rows: list[dict[str, Any]], seed: int) -> tuple[list[dict[str, Any]], Counter]:
    """Derives one preference pair per chat row (see the module docstring); returns pairs, kinds."""
    rng = random.Random(seed)
    pairs, kinds = [], Counter()
    answers = [r["messages"][-1] for r in rows]
    for i, row in enumerate(rows):
        chosen = row["messages"][-1]
        meta = row.get("meta") or {}
        if chosen.get("tool_calls"):
            kind = CALL_KINDS[(i + rng.randrange(len(CALL_KINDS))) % len(CALL_KINDS)]
            rejected = rejected_for(row, rng, kind)
        elif meta.get("refuse"):
            kind = "complied"
            rejected = _calls("create_task", {"title": rng.choice(task_api._TITLES)})
        else:
            others = [a for a in answers if a != chosen]
            if not others:
                continue
            kind, rejected = "other_answer", rng.choice(others)
        kinds[kind] += 1
        pairs.append(_pair(row, chosen, rejected,
                           {"source": meta.get("source"), "tool": meta.get("tool"),
                            "refuse": bool(meta.get("refuse")), "kind": kind}))
    return pairs, kinds


def read_pairs(path: str | Path, system_prompt: str | None = None,
               cache_dir: str | None = None, limits: Any = None
               ) -> tuple[list[dict], list[dict], int]:
    """Reads the user's preference pairs through the readers, and checks them.

    Any preference format the readers take (``prompt``/``chosen``/``rejected`` as strings or
    message lists, ShareGPT ``conversations`` + ``chosen``/``rejected`` turns), in any file kind
    they read (JSONL, a JSON array, Parquet, CSV, a save_to_disk folder, a glob). Pairs are
    checked like rows (``prepare.lint``: calls against tools, order, ``same_pair``), under
    ``limits`` (``llmops.data.limits.Limits``; None: the schema's largest bounds).

    Returns:
        ``(pairs as OpenAI pair rows + meta, rejects {"file", "line", "row", "code", "path",
        "message"} in file order, records read)``.

    Raises:
        FormatError: If the files cannot be read or hold no preference pairs.
    """
    from llmops.data.convert import FormatError
    from llmops.data.mix import row_kind
    from llmops.data.prepare import lint
    from llmops.data.readers import read_source

    rows, rejects = read_source(path, "auto", cache_dir=cache_dir, limits=limits)
    if "prompt" not in rows.column_names:
        raise FormatError(f"data.preference_path: {path} holds no preference pairs (its rows "
                          "convert to chat or text rows). Give prompt/chosen/rejected rows, or "
                          "ShareGPT conversations with chosen and rejected turns.")
    n_read = len(rows) + len(rejects)
    clean, problems = lint(rows, limits=limits)
    pairs = []
    for row in clean:
        pair = to_openai_row(row)
        if system_prompt and pair["prompt"][0]["role"] != "system":
            pair["prompt"] = [{"role": "system", "content": system_prompt}, *pair["prompt"]]
        kind, tool = row_kind([*row["prompt"], *row["chosen"]])
        pair["meta"] = {"source": "preference_path", **row["meta"], "kind": kind, "tool": tool,
                        "refuse": kind == "refusal"}
        pairs.append(pair)
    listed = [{**r["meta"], **r["reject"]} for part in (rejects, problems) for r in part]
    return pairs, sorted(listed, key=lambda r: (r["file"], r["row"])), n_read
