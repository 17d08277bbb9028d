"""Builds the embedded default model: a tiny Llama pre-trained offline on part of the Task-API task.

The result is a Hugging Face folder (config, safetensors weights, generation config, a byte-level
BPE tokenizer with a ChatML chat template that renders ``tools`` and ``tool_calls``) that
AutoModelForCausalLM / AutoTokenizer load like a hub model. It is pre-trained through that template
on only some tools as ``tool_calls`` (model.pretrain in conf/model/tiny.yaml), the others as text in
the legacy v1 schema, plus refusals, so it knows the output format but not every tool's current
call: LoRA SFT on all tools then shows real learning.

Heavy libraries (torch, transformers, tokenizers) are imported inside the functions.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llmops.data.chat import render, template_messages, template_tools

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = [PAD, IM_START, IM_END]

#: llama.cpp's GGUF converter identifies BPE pre-tokenizers by hash and does not know a self-trained
#: vocabulary. The tiny tokenizer uses GPT-2's byte-level regex, so export may declare "gpt-2".
GGUF_PRE_TOKENIZER = "gpt-2"

#: The call syntax the tiny template writes, named for ``llmops.scoring.parsers`` (eval reads it
#: from the template's ``llmops tool syntax`` comment).
TOOL_SYNTAX = "task_api"

#: ChatML with tools, kept compact for a 512-token vocabulary. A row's ``tools`` become one line
#: at the end of the system turn, their names (``Tools: create_task list_tasks ...``; a one-line
#: signature per tool made the demo's rows a third longer, 125 tokens instead of 92, and cut the
#: tiny base's exact match from 0.49 to 0.34 and the tuned one's from 0.99 to 0.79 for the same
#: steps). An assistant turn is its text, then one line per call, ``{"tool":NAME,"arguments":
#: {...}}`` (arguments given as JSON text are written verbatim, objects as compact JSON). The
#: assistant turn (answer and its <|im_end|>) sits inside {% generation %} so that
#: `return_assistant_tokens_mask` / TRL's `assistant_only_loss=True` train on exactly those tokens,
#: unless the message's ``weight`` is 0. ``tool`` messages are ordinary ChatML turns.
CHATML_TEMPLATE = (
    "{#- llmops tool syntax: " + TOOL_SYNTAX + " -#}\n"
    """{%- macro tools_line() -%}
{{- 'Tools:' -}}
{%- for t in tools -%}
{%- set f = t.function if t.function is defined else t -%}
{{- ' ' + f.name -}}
{%- endfor -%}
{%- endmacro -%}
{%- macro answer(m) -%}
{{- m.content or '' -}}
{%- for c in (m.tool_calls or []) -%}
{%- set f = c.function if c.function is defined else c -%}
{%- set a = f.arguments if f.arguments is not none else {} -%}
{%- set a = a if a is string else a | tojson(separators=(',', ':')) -%}
{{- ('\n' if m.content or not loop.first else '') + '{"tool":' + f.name | tojson -}}
{{- ',"arguments":' + a + '}' -}}
{%- endfor -%}
{%- endmacro -%}
{%- set has_tools = tools is defined and tools -%}
{%- if has_tools and (not messages or messages[0].role != 'system') -%}
{{- '<|im_start|>system\n' + tools_line() + '<|im_end|>\n' -}}
{%- endif -%}
{%- for message in messages -%}
{%- if message.role == 'assistant' -%}
{{- '<|im_start|>assistant\n' -}}
{%- if message.weight is defined and message.weight == 0 -%}
{{- answer(message) + '<|im_end|>' -}}
{%- else -%}
{%- generation -%}{{- answer(message) + '<|im_end|>' -}}{%- endgeneration -%}
{%- endif -%}
{{- '\n' -}}
{%- elif message.role == 'system' and loop.first and has_tools -%}
{{- '<|im_start|>system\n' + (message.content or '') + '\n' + tools_line() + '<|im_end|>\n' -}}
{%- else -%}
{{- '<|im_start|>' + message.role + '\n' + (message.content or '') + '<|im_end|>\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"""
)

#: Pre-training runs on one thread: a 64-wide model gains little from more, a second thread
#: collapses (4x slower) when another process shares the cores, and one thread makes the weights
#: machine-independent.
PRETRAIN_THREADS = 1

log = logging.getLogger("llmops.backends.tiny")


def corpus_texts(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Returns the texts a tokenizer is trained on: each row as the chat template renders it.

    Rendering through the template (tools line and call syntax included) lets BPE learn merges for
    exactly what the model reads and writes; the special tokens are cut out (they are added whole).
    Every run of digits is cut to its first digit, so BPE learns no digit-digit merge and numbers
    are encoded one digit per token (copying "task 430" then means copying three digits the model
    has seen everywhere, not one rare token). The pre-tokenizer stays GPT-2's.
    """
    import re

    from transformers.utils.chat_template_utils import render_jinja_template

    texts = []
    for row in rows:
        (text,), _ = render_jinja_template([template_messages(row["messages"])],
                                           tools=template_tools(row.get("tools")),
                                           chat_template=CHATML_TEMPLATE)
        for token in SPECIAL_TOKENS:
            text = text.replace(token, "\n")
        texts.append(re.sub(r"(\d)\d+", r"\1", text))
    return texts


def build_tokenizer(texts: Sequence[str], vocab_size: int, model_max_length: int):
    """Trains a byte-level BPE tokenizer (GPT-2 pre-tokenizer) and wraps it for transformers.

    Args:
        texts: Training texts.
        vocab_size: Target vocabulary size, special tokens included.
        model_max_length: The model's context length (model.context_length).

    Returns:
        A `PreTrainedTokenizerFast` with <|im_start|>, <|im_end|> (eos) and <|pad|> (pad) as special
        tokens and the ChatML chat template.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD,
        bos_token=None,
        unk_token=None,
        additional_special_tokens=[IM_START],
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.padding_side = "right"
    return fast


def encode_rows(tokenizer, rows: Sequence[Mapping[str, Any]], max_length: int) -> list[tuple]:
    """Renders rows with the chat template; returns truncated (input_ids, assistant_mask) pairs."""
    out = []
    for row in rows:
        enc = render(tokenizer, row["messages"], row.get("tools"), tokenize=True,
                     return_dict=True, return_assistant_tokens_mask=True)
        ids = list(enc["input_ids"])[:max_length]
        mask = list(enc["assistant_masks"])[:max_length]
        out.append((ids, mask))
    return out


def pretrain(
    model,
    encoded: Sequence[tuple],
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    pad_id: int,
    loss_on: str = "assistant",
    show_progress: bool = True,
) -> list[dict]:
    """Trains all weights of model with AdamW and a cosine schedule; returns the loss curve.

    Args:
        model: A causal LM in training mode.
        encoded: (input_ids, assistant_mask) pairs from `encode_rows`.
        steps: Optimiser steps.
        batch_size: Rows per step (sampled by a seeded permutation, epoch after epoch).
        learning_rate: Peak learning rate (10% linear warm-up, cosine decay to 10%).
        seed: Seed of the sampling order.
        pad_id: Padding token id.
        loss_on: "assistant" (assistant tokens only) or "all" (every real token).
        show_progress: Whether to draw a tqdm bar.
    """
    import torch
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    warm = max(1, steps // 10)

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, steps - warm)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    order: list[int] = []
    curve: list[dict] = []
    model.train()
    bar = tqdm(range(steps), desc="pretrain tiny base", disable=not show_progress, leave=False)
    for step in bar:
        if len(order) < batch_size:
            order += torch.randperm(len(encoded), generator=gen).tolist()
        idx, order = order[:batch_size], order[batch_size:]
        batch = [encoded[i] for i in idx]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        for r, (ids, mask) in enumerate(batch):
            n = len(ids)
            t = torch.tensor(ids, dtype=torch.long)
            input_ids[r, :n] = t
            attn[r, :n] = 1
            keep = (
                torch.tensor(mask, dtype=torch.bool) if loss_on == "assistant" else attn[r, :n] > 0
            )
            labels[r, :n] = torch.where(keep, t, torch.tensor(-100))
        loss = model(input_ids=input_ids, attention_mask=attn, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        value = float(loss.detach())
        if step % 10 == 0 or step == steps - 1:
            curve.append(
                {"step": step + 1, "loss": round(value, 4), "learning_rate": sched.get_last_lr()[0]}
            )
            bar.set_postfix(loss=f"{value:.3f}")
    model.eval()
    return curve


def _check_tools(tools: Sequence[str]) -> None:
    """Raises StageError when a pre-training tool is not one of the Task-API task's tools."""
    from llmops.data import task_api
    from llmops.errors import StageError

    known = list(task_api.TOOLS)
    unknown = [t for t in tools if t not in known]
    if unknown:
        raise StageError(
            f"base: base.pretrain.tools has unknown tool(s) {unknown}. Allowed: {', '.join(known)}."
        )


def _tokenizer_and_rows(arch: Mapping[str, Any], pp: Mapping[str, Any]) -> tuple[Any, list, list]:
    """Returns (tokenizer, pre-training rows, encoded rows) for the compiled arch and pretrain."""
    from llmops.data import task_api

    seed = int(pp["seed"])
    # Tokenizer vocabulary covers every tool (fixed seed), so SFT on all tools needs no new tokens.
    vocab_rows = task_api.generate(2000, seed=10_000 + seed)
    max_len = int(arch["max_position_embeddings"])
    tokenizer = build_tokenizer(corpus_texts(vocab_rows), int(arch["vocab_size"]), max_len)
    rows = task_api.generate(
        int(pp["n_examples"]),
        seed=seed,
        tools=[*pp["tools"], *pp["legacy_tools"]],
        include_refusals=bool(pp["include_refusals"]),
        legacy_tools=tuple(pp["legacy_tools"]),
    )
    return tokenizer, rows, encode_rows(tokenizer, rows, max_len)


def _llama(arch: Mapping[str, Any], tokenizer: Any) -> Any:
    """Returns a randomly initialised LlamaForCausalLM of the compiled arch and the tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=int(arch["hidden_size"]),
        intermediate_size=int(arch["intermediate_size"]),
        num_hidden_layers=int(arch["num_hidden_layers"]),
        num_attention_heads=int(arch["num_attention_heads"]),
        num_key_value_heads=int(arch["num_key_value_heads"]),
        max_position_embeddings=int(arch["max_position_embeddings"]),
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=bool(arch["tie_word_embeddings"]),
    )
    return LlamaForCausalLM(config)


def _save(model: Any, tokenizer: Any, out_dir: Path) -> None:
    """Saves the model (safetensors, greedy generation config) and the tokenizer into out_dir."""
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=96,
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def _report(arch: Mapping[str, Any], pp: Mapping[str, Any], tokenizer: Any, n_params: int,
            rows: list, encoded: list, curve: list[dict]) -> dict[str, Any]:
    """Returns base_report.json's content, timings and threads left to the caller."""
    seq_lens = [len(ids) for ids, _ in encoded]
    return {
        "model": "tiny",
        "architecture": "LlamaForCausalLM",
        "arch": {**arch, "vocab_size": len(tokenizer)},
        "parameters": n_params,
        "pretrain": pp,
        "pretrain_rows": len(rows),
        "steps": int(pp["steps"]),
        "loss_curve": curve,
        "final_loss": curve[-1]["loss"] if curve else None,
        "seq_len": {"mean": round(sum(seq_lens) / len(seq_lens), 1), "max": max(seq_lens)},
        "tokenizer": {
            "type": "byte-level BPE",
            "vocab_size": len(tokenizer),
            "special_tokens": SPECIAL_TOKENS,
            "gguf_pre_tokenizer": GGUF_PRE_TOKENIZER,
            "chat_template": "chatml",
            "tool_syntax": TOOL_SYNTAX,
        },
    }


def build_tiny_base(
    out_dir: str | Path,
    arch: Mapping[str, Any],
    pretrain_params: Mapping[str, Any],
    *,
    show_progress: bool = True,
    logger: logging.Logger | None = None,
) -> dict:
    """Builds, pre-trains and saves the tiny base model into out_dir; returns base_report.

    Args:
        out_dir: Folder to write the HF model, tokenizer and base_report.json into.
        arch: The base stage's compiled arch params (from conf/model/tiny.yaml;
            ``llmops.compiler.builders.base.ArchParams``).
        pretrain_params: The compiled pre-training params (model.pretrain plus the run's seed).
        show_progress: Whether to draw a progress bar.
        logger: Where to log progress.

    Returns:
        The report also written as out_dir/base_report.json.

    Raises:
        StageError: When pretrain_params names a tool the Task-API task does not have.
    """
    import torch

    from llmops.backends.common import torch_threads
    from llmops.core.plan import report_name
    from llmops.files import write_json

    logger = logger or log
    arch, pp = dict(arch), dict(pretrain_params)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_tools(pp["tools"])
    t0 = time.perf_counter()
    seed = int(pp["seed"])
    previous_threads = torch.get_num_threads()
    threads = torch_threads(PRETRAIN_THREADS)
    torch.manual_seed(seed)
    tokenizer, rows, encoded = _tokenizer_and_rows(arch, pp)
    model = _llama(arch, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("base: tiny Llama %s params, vocab %d, pre-training %d steps on %d rows (tools %s)",
                f"{n_params:,}", len(tokenizer), pp["steps"], len(rows), ",".join(pp["tools"]))
    t1 = time.perf_counter()
    curve = pretrain(model, encoded, steps=int(pp["steps"]), batch_size=int(pp["batch_size"]),
                     learning_rate=float(pp["learning_rate"]), seed=seed,
                     pad_id=tokenizer.pad_token_id, show_progress=show_progress)
    train_s = time.perf_counter() - t1
    torch.set_num_threads(previous_threads)
    _save(model, tokenizer, out_dir)
    report = {**_report(arch, pp, tokenizer, n_params, rows, encoded, curve), "threads": threads,
              "train_seconds": round(train_s, 2), "seconds": round(time.perf_counter() - t0, 2)}
    write_json(out_dir / report_name("base"), report)
    logger.info("base: pre-trained in %.1fs, final loss %.3f", train_s, report["final_loss"] or 0.0)
    return report
