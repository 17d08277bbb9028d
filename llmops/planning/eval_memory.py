"""Peak memory of the evaluation stages (eval_base, eval, lm_eval): pure arithmetic on config facts.

Models what the eval backends really hold (``llmops/backends/heldout.py``,
``llmops/backends/generation.py``, ``llmops/stages/lm_eval.py``):

- The model is loaded for inference: fp32 on a CPU, bf16 on a GPU, bitsandbytes k-bit linear
  layers with a quant config on a GPU (a CPU ignores quant). A LoRA adapter stays in fp32.
- Held-out loss: batches of rows x padded length <= ``eval.token_budget`` tokens (at least one
  row), one decoder pass without the LM head, then the head on the answer positions in chunks of
  ``logits_chunk_positions`` (``eval.logits_mb`` of fp32 logits), never batch x seq x vocab.
- Generation: rows per batch so rows x (prompt + ``eval.max_new_tokens``) <= the token budget
  (``eval.batch_size`` caps the rows); the KV cache holds that many tokens; the last position's
  logits only.
- lm_eval: the harness builds batch x length x vocab logits and their log-softmax; the stage picks
  its batch so batch x length stays within the logits chunk (at least one request, so one
  request's full logits are the floor).

The stage's peak is the larger of its two phases (loss, generation); the other phase's parts are
reported as 0 and its total named in the assumptions. The batching helpers here are the ones the
backends call, so plan and run agree. Units: bytes; GB means GiB, as in ``memory.py``.
"""

from __future__ import annotations

from typing import Any

from llmops.planning.memory import (
    CUDA_OVERHEAD_GB,
    GIB,
    linear_shapes,
    lora_params,
    param_groups,
)

MIB = 2**20
# Calibrated on this CPU against the peak RSS of eval_base.run / lm_eval.run in a fresh process
# (the tiny model and a 2-layer Qwen2 on the 151,936-token vocabulary, 8-24 rows of 500 / 1,000
# tokens: estimate / measured 0.97-1.07; tests/planning/test_eval_memory.py keeps a real eval within
# 0.8-1.25). The GPU figures (bf16, MASK_BYTES["cuda"], LOGIT_COPIES["cuda"]) are not measured.
# Live activations of one decoder layer in an inference forward, per token, in units of the
# compute dtype: residual, normed input, attention output, o_proj output (hidden-wide), q, k, v,
# and the MLP's gate, up and activation (intermediate-wide). Measured: 2.9 KB/token at h=64, i=128.
HIDDEN_TERMS = 4.0
INTER_TERMS = 3.0
# The padded batch's attention mask, per token x sequence length: transformers' bool mask
# (b x 1 x s x s, 1 byte) and, on a CPU, SDPA's float copy of it (4 bytes). Measured 5.4 bytes on
# a CPU; on a GPU the bool mask and a 16-bit bias are assumed (not measured here).
MASK_BYTES = {"cpu": 5.0, "cuda": 3.0}
# Held-out loss: the chunk's fp32 logits and cross_entropy's log-softmax (measured 2.0 x
# eval.logits_mb); on a GPU the bf16 head output comes first and is upcast.
LOGIT_COPIES = {"cpu": 2.0, "cuda": 2.5}
# generate()'s prefill holds about twice a plain forward's activations (measured 2.0-2.5x here).
GEN_FORWARD_FACTOR = 2.2
# Generation: last-position logits, the logits processors' float copy and the argmax scores.
GEN_LOGIT_COPIES = 3.0
# lm_eval: the harness's logits, its log_softmax of them (HFLM._loglikelihood_tokens) and the
# kernel's temporary: measured 3.1 copies of batch x length x vocab fp32 on this CPU.
HARNESS_LOGIT_COPIES = 3.0
# The eval process on a CPU: Python + torch + transformers + peft/bitsandbytes (385 MiB measured
# after loading; ~490 MiB once scoring loads its text metrics, after the model phases);
# the training stages' CPU_OVERHEAD_GB also holds trl. A fast tokenizer adds ~600 bytes per
# vocabulary entry (the Qwen2 tokenizer: ~90 MiB resident).
EVAL_CPU_OVERHEAD_GB = 0.45
TOKENIZER_BYTES_PER_TOKEN = 600.0
LM_EVAL_IMPORT_GB = 0.19  # lm_eval + its TaskManager on top of the eval overhead (measured)


def logits_chunk_positions(vocab_size: int, logits_mb: float) -> int:
    """Returns how many positions' full-vocabulary fp32 logits fit in ``logits_mb`` MiB (>= 1)."""
    return max(1, int(float(logits_mb) * MIB // (4 * max(1, int(vocab_size)))))


def token_batches(lengths: list[int], max_rows: int, token_budget: int | None) -> list[list[int]]:
    """Groups row indices, shortest first, so rows x longest length <= token_budget per batch.

    Args:
        lengths: Tokens of each row (for generation: prompt + max_new_tokens).
        max_rows: Most rows in a batch (eval.batch_size).
        token_budget: Most rows x padded length; None bounds by rows only.

    Returns:
        Batches of indices into lengths; every batch holds at least one row, a row longer than the
        budget goes alone.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    cap = max(1, int(max_rows))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = max([lengths[j] for j in current] + [lengths[i]])
        fits = len(current) < cap and (token_budget is None
                                       or (len(current) + 1) * width <= int(token_budget))
        if current and not fits:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def kv_bytes_per_token(model: dict[str, Any], dtype_bytes: float) -> float:
    """Returns the KV cache bytes of one token: layers x (key + value) x kv heads x head dim."""
    head_dim = model.get("head_dim") or model["hidden_size"] // model["num_attention_heads"]
    return model["num_layers"] * 2 * model["num_kv_heads"] * head_dim * dtype_bytes


def _forward_activations(model: dict[str, Any], tokens: int, seq: int, a: float,
                         cuda: bool) -> float:
    """Returns the live bytes of an inference forward over ``tokens`` padded to ``seq``: one
    layer's activations at a time, and the attention mask of the padded batch."""
    shapes = linear_shapes(model)
    q, kv = shapes["q_proj"][1], shapes["k_proj"][1]
    h, i = model["hidden_size"], model["intermediate_size"]
    per_token = (HIDDEN_TERMS * h + 2 * kv + q + INTER_TERMS * i) * a
    return tokens * per_token + tokens * seq * MASK_BYTES["cuda" if cuda else "cpu"]


def _weights(model: dict[str, Any], quant: dict[str, Any] | None, cuda: bool,
             notes: list[str]) -> float:
    g = param_groups(model)
    qtype = (quant or {}).get("type", "none")
    if qtype == "none" or not cuda:
        b = 2 if cuda else 4
        notes.append(f"weights loaded for eval in {'bf16' if cuda else 'fp32'}"
                     + ("" if qtype == "none" else f" (quant.type={qtype} applies on a GPU only)"))
        return g["total"] * b
    shapes = linear_shapes(model)
    if qtype in ("nf4", "fp4"):
        absmax = 1 / 64 + 4 / (64 * 256) if quant.get("double_quant") else 4 / 64
        per = 0.5 + absmax
    else:
        per = 1.0 + 4 * sum(o for _, o in shapes.values()) / max(
            1, g["linear"] // model["num_layers"])
    notes.append(f"weights: {qtype} linear layers ({per * 8:.2f} bits/param), the rest in 16-bit")
    return g["linear"] * per + (g["embed"] + g["head"] + g["other"]) * 2


def _common(model: dict, quant: dict | None, hardware: dict, adapter: bool, lora: dict | None,
            notes: list[str]) -> tuple[dict[str, float], bool, float]:
    cuda = hardware.get("device") == "cuda"
    a = 2.0 if cuda else 4.0
    parts = {"weights": _weights(model, quant, cuda, notes), "adapter": 0.0}
    if adapter:
        if lora:
            parts["adapter"] = lora_params(model, lora) * 4.0
            notes.append(f"LoRA adapter r{lora.get('r')} in fp32")
        else:
            notes.append("adapter size unknown (no lora params): counted as 0")
    if cuda:
        overhead = CUDA_OVERHEAD_GB * GIB
        notes.append(f"overhead: CUDA context {CUDA_OVERHEAD_GB} GB")
    else:
        tok = model["vocab_size"] * TOKENIZER_BYTES_PER_TOKEN
        overhead = EVAL_CPU_OVERHEAD_GB * GIB + tok
        notes.append(f"overhead: Python + torch + transformers + peft {EVAL_CPU_OVERHEAD_GB} GB "
                     f"+ the tokenizer ~{tok / MIB:.0f} MiB")
    parts["overhead"] = overhead
    return parts, cuda, a


def eval_parts(model: dict[str, Any], quant: dict[str, Any] | None, eval: dict[str, Any],
               hardware: dict[str, Any], max_length: int, adapter: bool,
               lora: dict[str, Any] | None = None) -> tuple[dict[str, float], list[str]]:
    """Returns the bytes each part of an eval_base / eval stage holds at its peak, and the
    assumptions.

    Args:
        model: The planner's model facts (hidden_size, num_layers, num_attention_heads,
            num_kv_heads, intermediate_size, vocab_size, params, tie_embeddings; head_dim if set).
        quant: The quant params ({"type", "double_quant"}); None or type none: full precision.
        eval: The eval stage params: batch_size, max_new_tokens, token_budget, logits_mb.
        hardware: The resolved hardware profile (device "cpu" or "cuda").
        max_length: The longest test row in tokens (prompt + answer), e.g. train.max_length.
        adapter: Whether a LoRA adapter is applied on the base (the eval stage of a LoRA run).
        lora: The LoRA params (r, target_modules) for the adapter's size; None counts it as 0.

    Returns:
        ({weights, adapter, loss_activations, loss_logits, kv_cache, gen_activations, gen_logits,
        overhead} in bytes, assumptions). The parts of the phase that does not peak are 0.
    """
    notes: list[str] = []
    parts, cuda, a = _common(model, quant, hardware, adapter, lora, notes)
    s, rows = max(1, int(max_length)), max(1, int(eval["batch_size"]))
    budget, new = int(eval["token_budget"]), int(eval["max_new_tokens"])
    V = model["vocab_size"]

    loss_tokens = min(rows, max(1, budget // s)) * s  # token_batches on rows of s tokens
    chunk = min(logits_chunk_positions(V, eval["logits_mb"]), loss_tokens)
    loss = {
        "loss_activations": _forward_activations(model, loss_tokens, s, a, cuda)
        + loss_tokens * model["hidden_size"] * a,  # the decoder's last hidden states, kept
        "loss_logits": chunk * V * 4 * LOGIT_COPIES["cuda" if cuda else "cpu"],
    }
    gen_rows = min(rows, max(1, budget // (s + new)))
    kv = gen_rows * (s + new) * kv_bytes_per_token(model, a)
    gen = {
        "kv_cache": kv,
        "gen_activations": GEN_FORWARD_FACTOR * _forward_activations(model, gen_rows * s, s,
                                                                     a, cuda),
        "gen_logits": gen_rows * V * 4 * GEN_LOGIT_COPIES,
    }
    notes.append(f"held-out loss: batches of <= {loss_tokens} tokens (eval.token_budget "
                 f"{budget}, rows <= {s} tokens), LM head on {chunk} positions at a time "
                 f"(eval.logits_mb {eval['logits_mb']}; assumed full: the answers of a batch "
                 "fill a chunk)")
    notes.append(f"generation: {gen_rows} rows x ({s} + {new} new) tokens of KV cache "
                 f"({kv_bytes_per_token(model, a) / 1024:.1f} KiB/token)")
    loss_total, gen_total = sum(loss.values()), sum(gen.values())
    if loss_total >= gen_total:
        gen = dict.fromkeys(gen, 0.0)
        notes.append(f"peak in the held-out loss; generation's own part: {gen_total / GIB:.2f} GB")
    else:
        loss = dict.fromkeys(loss, 0.0)
        notes.append(f"peak in generation; the held-out loss's own part: {loss_total / GIB:.2f} GB")
    return {**parts, **loss, **gen}, notes


def harness_batch(vocab_size: int, logits_mb: float, longest: int, batch_size: int) -> int:
    """Returns the lm_eval harness batch: requests whose batch x length x vocab logits fit in the
    logits chunk, at most ``batch_size``, at least one."""
    positions = logits_chunk_positions(vocab_size, logits_mb)
    return max(1, min(int(batch_size), positions // max(1, int(longest))))


def lm_eval_parts(model: dict[str, Any], quant: dict[str, Any] | None, lm_eval: dict[str, Any],
                  hardware: dict[str, Any], max_length: int, adapter: bool,
                  lora: dict[str, Any] | None = None) -> tuple[dict[str, float], list[str]]:
    """Returns the bytes each part of the lm_eval stage holds at its peak, and the assumptions.

    Args:
        model, hardware, max_length, adapter, lora: As for ``eval_parts``.
        quant: Ignored by the harness (it loads the model in full precision); kept for symmetry.
        lm_eval: The lm_eval stage params: batch_size, max_gen_toks, logits_mb.

    Returns:
        ({weights, adapter, harness_activations, harness_logits, kv_cache, overhead} in bytes,
        assumptions).
    """
    notes: list[str] = []
    parts, cuda, a = _common(model, None, hardware, adapter, lora, notes)
    s, V = max(1, int(max_length)), model["vocab_size"]
    b = harness_batch(V, lm_eval["logits_mb"], s, int(lm_eval["batch_size"]))
    new = int(lm_eval["max_gen_toks"])
    parts.update(
        harness_activations=_forward_activations(model, b * s, s, a, cuda),
        harness_logits=b * s * V * a * HARNESS_LOGIT_COPIES,
        kv_cache=b * (s + new) * kv_bytes_per_token(model, a),
    )
    if not cuda:
        parts["overhead"] += LM_EVAL_IMPORT_GB * GIB
    notes.append(f"lm_eval harness batch {b} (eval.logits_mb {lm_eval['logits_mb']} / "
                 f"({s} tokens x {V} vocab), at most eval.lm_eval.batch_size "
                 f"{lm_eval['batch_size']}): logits + log_softmax of batch x {s} x vocab "
                 f"(~{HARNESS_LOGIT_COPIES:g} fp32 copies)")
    return parts, notes
