"""Threads chosen by work vs 1 thread and all cores: a few training and eval steps, timed.

    python benchmarks/threads.py [--steps 3] [--real-batch 16]

Two models, built offline with random weights: the tiny default's architecture (vocab 512) and a
Qwen2-shaped model of the issue's size on the real Qwen2 vocabulary (151,936 tokens, 2 layers,
hidden 64, ~10M parameters, almost all embedding). Each runs train steps (forward + backward, the
LM head scored in 1,024-token chunks as TRL's fused head does) and eval steps (inference-mode
forward) at the default batch (16 x 512 tokens) on 1 thread, on all cores, and on the count
``llmops.config.resolve.cpu_threads`` chooses. Prints seconds per step and the ratios; chosen
should be no slower than the better of 1 and all cores (within noise).
"""

from __future__ import annotations

import argparse
import os
import time


def _models() -> dict:
    from transformers import LlamaConfig, Qwen2Config

    return {
        "tiny (vocab 512)": LlamaConfig(
            vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024),
        "qwen2 real vocab (151,936)": Qwen2Config(
            vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
            tie_word_embeddings=True),
    }


def _step(model, ids, train: bool) -> None:
    import torch

    if not train:
        with torch.inference_mode():
            hidden = model.model(input_ids=ids).last_hidden_state
            for chunk in hidden.reshape(-1, hidden.shape[-1]).split(1024):
                model.lm_head(chunk).float().logsumexp(-1)
        return
    hidden = model.model(input_ids=ids).last_hidden_state[:, :-1]
    flat, target = hidden.reshape(-1, hidden.shape[-1]), ids[:, 1:].reshape(-1)
    loss = 0.0
    for h, t in zip(flat.split(1024), target.split(1024), strict=True):
        loss = loss + torch.nn.functional.cross_entropy(model.lm_head(h).float(), t,
                                                        reduction="sum")
    loss.backward()
    model.zero_grad(set_to_none=True)


def _time(model, ids, train: bool, threads: int, steps: int) -> float:
    import torch

    torch.set_num_threads(threads)
    _step(model, ids, train)  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        _step(model, ids, train)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from llmops.config.resolve import cpu_threads, step_work

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--length", type=int, default=512)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    print(f"{cores} cores; batch {args.batch} x {args.length} tokens; {args.steps} steps each")
    print(f"{'model':28} {'step':5} {'chosen':>6} {'1 thr s':>8} {'all s':>8} {'chosen s':>9} "
          f"{'chosen/best':>11}")
    for name, config in _models().items():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
        n = sum(p.numel() for p in model.parameters())
        facts = {"params": n, "vocab_size": config.vocab_size, "hidden_size": config.hidden_size}
        tokens = args.batch * args.length
        chosen = cpu_threads("cpu", facts, tokens) or cores
        ids = torch.randint(0, config.vocab_size, (args.batch, args.length))
        for train in (True, False):
            model.train(train)
            one = _time(model, ids, train, 1, args.steps)
            every = _time(model, ids, train, cores, args.steps)
            pick = one if chosen == 1 else every if chosen == cores else \
                _time(model, ids, train, chosen, args.steps)
            best = min(one, every)
            print(f"{name:28} {'train' if train else 'eval':5} {chosen:>6} {one:8.3f} "
                  f"{every:8.3f} {pick:9.3f} {pick / best:11.2f}   "
                  f"(work {step_work(facts, tokens):.2g}, {n / 1e6:.1f}M params)")


if __name__ == "__main__":
    main()
