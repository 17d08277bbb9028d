"""The data stage's preview: the first train rows exactly as sft trains on them.

Each row goes through ``llmops.backends.templates.training_tokens``, the function sft tokenizes
with (the model's own template through ``llmops.data.chat.render``, call arguments as objects, and
the assistant-only loss mask), and is written back as text in runs of tokens that carry loss or
not. So the preview cannot drift from training: a double-encoded call
(``"arguments": "{\\"title\\": ...}"``) or a mask that covers the wrong tokens shows at a glance
(axolotl's ``preprocess --debug`` does the same for its users).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def build(tokenizer: Any | None, train_path: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Returns data_report.json's ``preview`` section for the first ``params["preview"]["rows"]``
    rows of train.jsonl.

    Args:
        tokenizer: The model's tokenizer as the data stage loaded it (its chat template set), or
            None when none could be loaded offline (the section then says so).
        train_path: The train.jsonl the stage wrote.
        params: The data params (``preview``: ``rows``, ``assistant_only_loss``).

    Returns:
        {"rows": [{"line", "tokens", "loss_tokens", "segments": [{"text", "loss"}]}], "mask":
        how the loss mask is computed} (or {"rows": [], "note"} without a tokenizer).
    """
    from llmops.backends.templates import loss_segments, mask_method, training_tokens

    wanted = int(params["preview"]["rows"])
    if tokenizer is None:
        return {"rows": [], "note": "no tokenizer could be loaded offline, so no row can be "
                                    "shown as the model's template renders it"}
    rows, lines = [], []
    with open(train_path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if len(rows) >= wanted:
                break
            row = json.loads(line)
            # sft trains on text and chat rows, never on answers labelled undesirable
            if ("text" in row or "messages" in row) and row.get("label") is not False:
                rows.append(row)
                lines.append(number)
    method = mask_method(tokenizer) if getattr(tokenizer, "chat_template", None) else None
    if method is None and any("messages" in r for r in rows):
        return {"rows": [], "note": "the tokenizer has no chat template, so no chat row can be "
                                    "shown as the model trains on it"}
    assistant_only = bool(params["preview"]["assistant_only_loss"])
    out = []
    for k, row in enumerate(rows):
        enc = training_tokens(tokenizer, row, method, assistant_only)
        out.append({"line": lines[k], "tokens": len(enc["input_ids"]),
                    "loss_tokens": sum(enc["assistant_masks"]),
                    "segments": loss_segments(tokenizer, enc["input_ids"],
                                              enc["assistant_masks"])})
    mask = "all_tokens" if not assistant_only or method is None else method[0]
    return {"rows": out, "mask": mask}


def show(preview: dict[str, Any], path: Path) -> None:
    """Prints the preview's first row with rich: the tokens that carry loss highlighted."""
    from rich.console import Console
    from rich.text import Text

    if not preview.get("rows"):
        return
    row = preview["rows"][0]
    console = Console(highlight=False, soft_wrap=True)
    plain = not console.is_terminal  # a log file: the loss spans between « and »
    text = Text()
    for seg in row["segments"]:
        if seg["loss"]:
            text.append(f"«{seg['text']}»" if plain else seg["text"], style="bold black on green")
        else:
            text.append(seg["text"], style="dim")
    how = "between « and »" if plain else "highlighted"
    console.rule(f"train.jsonl line {row['line']} as the model trains on it: {row['tokens']} "
                 f"tokens, loss on {row['loss_tokens']} ({how}; mask: {preview['mask']})")
    console.print(text)
    # The stage writes into the store's work folder; the report reaches the run folder by name.
    console.rule(f"data.preview: {len(preview['rows'])} rows in {path.name}, \"preview\" "
                 "(data.preview=0: off)")
