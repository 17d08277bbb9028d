"""What fine-tuning through OpenAI's API costs and takes, and when it is the right way. Pure.

Tokens are counted the way OpenAI's cookbook counts a chat example (a few tokens per message for
its role and framing, the text of every value, the tools' JSON), with the model's tiktoken
encoding when tiktoken is installed and its encoding loads offline; otherwise they are estimated
at 4 characters a token. Every figure says which (``method``). Cost = tokens x epochs x the
configured price per million training tokens.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from collections.abc import Mapping, Sequence
from typing import Any

#: Characters per token of the estimate when no tiktoken encoding is at hand.
CHARS_PER_TOKEN = 4
#: Tokens OpenAI's cookbook adds per message (role and framing) and per example (reply priming).
PER_MESSAGE, PER_EXAMPLE = 3, 3
#: The rule of thumb of the three ways (fewer than FEW_SHOT_BELOW examples: few-shot prompting;
#: up to API_UP_TO: OpenAI's fine-tuning API; more: LoRA/QLoRA on your own hardware).
FEW_SHOT_BELOW, API_UP_TO = 100, 1000
#: Epochs the API picks for n_epochs=auto when the plan has no other figure (its default is 3
#: for a few hundred examples).
AUTO_EPOCHS = 3


@functools.cache
def _encoding(model: str) -> Any:
    """Returns the model's tiktoken encoding when tiktoken is installed and the encoding loads
    here (its file cached: no network), else None."""
    if importlib.util.find_spec("tiktoken") is None:
        return None
    try:
        import tiktoken

        try:
            return tiktoken.encoding_for_model(model)
        except KeyError:
            return tiktoken.get_encoding("o200k_base")
    except Exception:  # noqa: BLE001 - no cached encoding file offline: estimate instead
        return None


def token_method(model: str) -> str:
    """Says how tokens are counted for model: "tiktoken <encoding>" or the estimate."""
    enc = _encoding(model)
    return f"tiktoken {enc.name}" if enc is not None else \
        f"estimated ({CHARS_PER_TOKEN} characters a token; tiktoken's encoding is not available " \
        "offline)"


def _text_tokens(text: str, model: str) -> int:
    enc = _encoding(model)
    if enc is not None:
        return len(enc.encode(text, disallowed_special=()))
    return -(-len(text) // CHARS_PER_TOKEN)


def example_tokens(row: Mapping[str, Any], model: str) -> int:
    """Returns the tokens of one chat example (messages, tool calls, tools) for model."""
    n = PER_EXAMPLE
    for m in row.get("messages") or []:
        n += PER_MESSAGE
        for key, value in m.items():
            if key in ("weight",) or value is None:
                continue
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            n += _text_tokens(text, model)
    if row.get("tools"):
        n += _text_tokens(json.dumps(row["tools"], ensure_ascii=False), model)
    return n


def cost(tokens: int, epochs: float, price_per_1m: float) -> float:
    """Returns the training cost in USD: tokens x epochs x price per million tokens."""
    return round(tokens * epochs * price_per_1m / 1e6, 4)


def job_hours(tokens: int, epochs: float, seconds_per_1k: float, queue_minutes: float) -> float:
    """Returns the job's estimated hours: queue time plus trained tokens at the planning rate."""
    return round(queue_minutes / 60 + tokens * epochs / 1000 * seconds_per_1k / 3600, 3)


def epochs_of(n_epochs: int | str, fallback: float) -> float:
    """Returns the epochs a job trains: n_epochs, or for auto the fallback (train.epochs)."""
    return float(n_epochs) if n_epochs != "auto" else float(fallback)


def way(examples: int) -> dict[str, Any]:
    """Returns the rule of thumb's way for a number of labelled examples: few-shot prompting
    (< 100), OpenAI's fine-tuning API (100-1,000) or LoRA/QLoRA (more), and why."""
    if examples < FEW_SHOT_BELOW:
        return {"way": "few-shot", "backend": None,
                "why": f"{examples} examples (< {FEW_SHOT_BELOW}): few-shot prompting first; "
                       "too few to fine-tune reliably"}
    if examples <= API_UP_TO:
        return {"way": "openai", "backend": "openai",
                "why": f"{examples} examples ({FEW_SHOT_BELOW}-{API_UP_TO}): OpenAI's "
                       "fine-tuning API (train.backend=openai) needs no GPU and trains "
                       "a hosted model"}
    return {"way": "lora", "backend": None,
            "why": f"{examples} examples (> {API_UP_TO}): LoRA/QLoRA on your own hardware "
                   "(train.backend=hf or unsloth)"}


def api_vs_self_host(api_cost_usd: float, self_host_cost_usd: float | None) -> str:
    """Returns one line comparing the API job's cost with the self-hosted training's."""
    if self_host_cost_usd is None:
        return f"API training ~${api_cost_usd:,.2f}; self-hosted cost unknown (no hourly price " \
               "for this hardware)"
    cheaper = "API" if api_cost_usd < self_host_cost_usd else "self-hosted"
    return f"API training ~${api_cost_usd:,.2f} vs self-hosted ~${self_host_cost_usd:,.2f}: " \
           f"{cheaper} is cheaper"


def estimate(rows: Sequence[Mapping[str, Any]], n_train: int | None, n_val: int | None,
             model: str, epochs: float, price_per_1m: float) -> dict[str, Any]:
    """Estimates the upload and its cost from sample rows of the training data.

    Args:
        rows: Sample rows in OpenAI's chat form (may be all of them).
        n_train: Train rows uploaded (None: unknown before the data stage runs).
        n_val: Validation rows uploaded (None: unknown).
        model: The base model id (its encoding counts the tokens).
        epochs: Epochs the job trains.
        price_per_1m: USD per million training tokens.

    Returns:
        {"train_rows", "val_rows", "tokens_per_row", "train_tokens", "trained_tokens",
        "cost_usd", "token_count"}: None where the rows are unknown.
    """
    per_row = (sum(example_tokens(r, model) for r in rows) / len(rows)) if rows else None
    tokens = round(per_row * n_train) if per_row is not None and n_train is not None else None
    return {"train_rows": n_train, "val_rows": n_val,
            "tokens_per_row": round(per_row, 1) if per_row is not None else None,
            "train_tokens": tokens,
            "trained_tokens": round(tokens * epochs) if tokens is not None else None,
            "epochs": epochs,
            "cost_usd": cost(tokens, epochs, price_per_1m) if tokens is not None else None,
            "token_count": token_method(model)}
