"""Held-out loss: the model's negative log-likelihood of each test row's answer, teacher-forced.

A row is rendered through the model's own chat template twice, without and with its last
(assistant) message; the tokens past the prompt are the answer, and only they are scored. Base and
tuned models go through this same code, so their losses compare. Heavy imports stay inside.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def _render(tokenizer: Any, row: Mapping[str, Any]) -> tuple[str, str]:
    """Returns (prompt, prompt + answer) of a row, as the chat template renders them (through
    ``llmops.data.chat.render``, as sft trained on them)."""
    from llmops.data.chat import render

    messages, tools = list(row["messages"]), row.get("tools") or None
    prompt = render(tokenizer, messages[:-1], tools, add_generation_prompt=True)
    return prompt, render(tokenizer, messages, tools)


def answer_tokens(tokenizer: Any, row: Mapping[str, Any], max_length: int
                  ) -> tuple[list[int], int] | None:
    """Returns (token ids, index of the first answer token), cut to the last max_length tokens.

    Returns None when the template does not render the prompt as a prefix of the whole row, or
    the row has no answer token.
    """
    prompt, full = _render(tokenizer, row)
    if not full.startswith(prompt):
        return None
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    start = next((i for i, (a, _) in enumerate(offsets) if a >= len(prompt)), len(ids))
    if start >= len(ids):
        return None
    cut = max(0, len(ids) - max_length)
    return ids[cut:], max(start - cut, 1)


def row_losses(model: Any, tokenizer: Any, rows: Sequence[Mapping[str, Any]],
               batch_size: int = 32, threads: int | None = None
               ) -> list[tuple[float, int] | None]:
    """Returns, per row, (summed negative log-likelihood of its answer tokens, their count).

    Args:
        model: Causal LM in eval mode (a PEFT model included).
        tokenizer: Its tokenizer, with the chat template.
        rows: Chat rows; the last message is the answer scored.
        batch_size: Rows per forward pass (right-padded, sorted by length).
        threads: Torch CPU threads (StageContext.threads); None leaves them as they are.

    Returns:
        One entry per row, None for a row that could not be measured (see answer_tokens).
    """
    import torch

    from llmops.backends.common import cpu_threads

    limit = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
    encoded = [answer_tokens(tokenizer, row, limit) for row in rows]
    order = sorted((i for i, e in enumerate(encoded) if e), key=lambda i: len(encoded[i][0]))
    out: list[tuple[float, int] | None] = [None] * len(rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    with cpu_threads(threads), torch.inference_mode():
        for b in range(0, len(order), max(1, int(batch_size))):
            idx = order[b:b + max(1, int(batch_size))]
            width = max(len(encoded[i][0]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            labels = torch.full((len(idx), width), -100, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                tokens, start = encoded[i]
                ids[r, :len(tokens)] = torch.tensor(tokens)
                labels[r, start:len(tokens)] = torch.tensor(tokens[start:])
                mask[r, :len(tokens)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            logits, target = logits[:, :-1].float(), labels[:, 1:].to(device)
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100,
                reduction="none").view(target.shape)
            counts = (target != -100).sum(dim=1)
            for r, i in enumerate(idx):
                out[i] = (float(nll[r].sum()), int(counts[r]))
    return out
