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


def _answer_offsets(tokenizer: Any, row: Mapping[str, Any]
                    ) -> tuple[str, list[int], list[tuple[int, int]], int] | None:
    """Returns (rendered row, its token ids, their character offsets, index of the first answer
    token), or None when the prompt is no prefix of the row's render or no token follows it."""
    prompt, full = _render(tokenizer, row)
    if not full.startswith(prompt):
        return None
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    start = next((i for i, (a, _) in enumerate(offsets) if a >= len(prompt)), len(ids))
    return None if start >= len(ids) else (full, ids, offsets, start)


def answer_tokens(tokenizer: Any, row: Mapping[str, Any], max_length: int
                  ) -> tuple[list[int], int] | None:
    """Returns (token ids, index of the first answer token), cut to the last max_length tokens.

    Returns None when the template does not render the prompt as a prefix of the whole row, or
    the row has no answer token.
    """
    got = _answer_offsets(tokenizer, row)
    if got is None:
        return None
    _, ids, _, start = got
    cut = max(0, len(ids) - max_length)
    return ids[cut:], max(start - cut, 1)


def loss_tokens(tokenizer: Any, row: Mapping[str, Any], max_length: int,
                reasoning: str = "train") -> tuple[list[int], list[int]] | None:
    """Returns (token ids, loss mask: 1 on each answer token scored), cut to the last max_length
    tokens; the first token is never scored (nothing predicts it). With ``reasoning="context"``
    (data.reasoning, as sft trained) the answer's rendered reasoning blocks
    (``templates.reasoning_spans``) are out of the loss: the model sees them, is not scored on
    them.

    Returns None as ``answer_tokens`` does, or when no answer token is left to score.
    """
    from llmops.backends.templates import reasoning_spans
    from llmops.data.chat import template_messages

    got = _answer_offsets(tokenizer, row)
    if got is None:
        return None
    full, ids, offsets, start = got
    spans = reasoning_spans(full, template_messages(row["messages"])) \
        if reasoning == "context" else []
    mask = [int(i >= start and not any(s <= a < e for s, e in spans))
            for i, (a, _) in enumerate(offsets)]
    cut = max(0, len(ids) - max_length)
    ids, mask = ids[cut:], mask[cut:]
    mask[0] = 0
    return (ids, mask) if any(mask) else None


def _output_head(model: Any) -> tuple[Any, Any] | None:
    """Returns (decoder, output head) when the head on the decoder's last hidden state gives the
    model's own logits, else None (a model that scales or soft-caps its logits after the head).

    A PEFT model reaches both through its wrapped base; LoRA layers sit inside them, so the
    adapter applies.
    """
    import torch

    try:
        decoder, head = model.get_decoder(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError, ValueError):
        return None
    if head is None or decoder is None or decoder is model:
        return None
    device = next(model.parameters()).device
    ids = torch.arange(1, 9, device=device).unsqueeze(0) % int(model.config.vocab_size)
    want = model(input_ids=ids, use_cache=False).logits[:, -1].float()
    got = head(decoder(input_ids=ids, use_cache=False).last_hidden_state[:, -1]).float()
    same = want.shape == got.shape and bool(torch.allclose(want, got, rtol=1e-4, atol=1e-4))
    return (decoder, head) if same else None


def _batch_tensors(encoded: Sequence[tuple[list[int], list[int]]], pad: int
                   ) -> tuple[Any, Any, Any]:
    """Returns right-padded (ids, attention mask, answer mask) of a batch; the answer mask marks
    the positions whose next token is a scored answer token (``loss_tokens``' mask)."""
    import torch

    width = max(len(tokens) for tokens, _ in encoded)
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    scored = torch.zeros((len(encoded), width), dtype=torch.bool)
    for r, (tokens, loss) in enumerate(encoded):
        ids[r, :len(tokens)] = torch.tensor(tokens)
        mask[r, :len(tokens)] = 1
        scored[r, :len(tokens) - 1] = torch.tensor(loss[1:], dtype=torch.bool)
    return ids, mask, scored


def row_losses(model: Any, tokenizer: Any, rows: Sequence[Mapping[str, Any]],
               batch_size: int = 32, threads: int | None = None, *,
               token_budget: int | None = None, logits_mb: float | None = None,
               oom_retries: list[dict[str, Any]] | None = None, reasoning: str = "train"
               ) -> list[tuple[float, int] | None]:
    """Returns, per row, (summed negative log-likelihood of its answer tokens, their count).

    Never holds a batch's full-vocabulary logits: one decoder pass per batch, then the output head
    on the answer positions only, ``logits_mb`` MiB of fp32 logits at a time (a model whose
    logits are post-processed after the head goes through its own forward with a boolean
    ``logits_to_keep`` of the answer positions). Rows are grouped shortest first so rows x padded
    length <= ``token_budget``; an out-of-memory batch is halved and retried (``oom.run_batches``).

    Args:
        model: Causal LM in eval mode (a PEFT model included).
        tokenizer: Its tokenizer, with the chat template.
        rows: Chat rows; the last message is the answer scored.
        batch_size: Most rows per forward pass (right-padded).
        threads: Torch CPU threads (StageContext.threads); None leaves them as they are.
        token_budget: Most rows x padded length per pass (eval.token_budget); None: rows only.
        logits_mb: MiB of fp32 logits held at once (eval.logits_mb); None: a batch's answer
            positions at once.
        oom_retries: Each out-of-memory halving is appended here (see ``oom.run_batches``).
        reasoning: data.reasoning; ``context`` leaves the answers' reasoning out of the loss, as
            sft does (``loss_tokens``).

    Returns:
        One entry per row, None for a row that could not be measured (see loss_tokens).
    """
    import torch

    from llmops.backends.common import cpu_threads
    from llmops.backends.oom import run_batches
    from llmops.planning.eval_memory import logits_chunk_positions

    limit = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
    encoded = [loss_tokens(tokenizer, row, limit, reasoning) for row in rows]
    valid = [i for i, e in enumerate(encoded) if e]
    out: list[tuple[float, int] | None] = [None] * len(rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    vocab = int(model.config.vocab_size)
    chunk = logits_chunk_positions(vocab, logits_mb) if logits_mb else None

    def score(batch: list[int]) -> None:
        idx = [valid[j] for j in batch]
        ids, mask, scored = _batch_tensors([encoded[i] for i in idx], pad)
        ids, mask, scored = ids.to(device), mask.to(device), scored.to(device)
        targets = ids[:, 1:][scored[:, :-1]]
        owner = torch.arange(len(idx), device=device).unsqueeze(1).expand_as(ids)[scored]
        sums = torch.zeros(len(idx), dtype=torch.float64, device=device)
        if parts is None:
            try:
                logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=scored,
                               use_cache=False).logits
            except TypeError:  # a (remote-code) model without logits_to_keep: full logits
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[scored]
            nll = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
            sums.index_add_(0, owner, nll.double())
        else:
            decoder, head = parts
            hidden = decoder(input_ids=ids, attention_mask=mask,
                             use_cache=False).last_hidden_state[scored]
            step = chunk or len(targets)
            for c in range(0, len(targets), step):
                logits = head(hidden[c:c + step]).float()
                nll = torch.nn.functional.cross_entropy(logits, targets[c:c + step],
                                                        reduction="none")
                del logits
                sums.index_add_(0, owner[c:c + step], nll.double())
        counts = scored.sum(dim=1)
        for r, i in enumerate(idx):
            out[i] = (float(sums[r]), int(counts[r]))

    with cpu_threads(threads), torch.inference_mode():
        parts = _output_head(model)
        run_batches("held-out loss", [len(encoded[i][0]) for i in valid], batch_size,
                    token_budget, score, oom_retries)
    return out
