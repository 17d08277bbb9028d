"""Held-out loss (llmops/backends/heldout.py) and its out-of-memory halving (backends/oom.py)."""

from __future__ import annotations

import pytest

from llmops.data import task_api


def _reference(model, tok, rows):
    """The straightforward loss: each row alone, its full logits, the answer tokens scored."""
    import torch

    from llmops.backends.heldout import answer_tokens

    out = []
    for row in rows:
        ids, start = answer_tokens(tok, row, 4096)
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits[start - 1:], torch.tensor(ids[start:]),
                                                reduction="sum")
        out.append((float(nll), len(ids) - start))
    return out


def _assert_same(got, want):
    assert [c for _, c in got] == [c for _, c in want]
    assert [x for x, _ in got] == pytest.approx([x for x, _ in want], rel=1e-4)


def test_chunked_loss_equals_the_full_logits_loss_on_the_tiny_model(tiny_base):
    import torch
    from peft import LoraConfig, get_peft_model

    from llmops.backends.generation import load_model
    from llmops.backends.heldout import row_losses

    model, tok = load_model(tiny_base)
    rows = task_api.generate(10, seed=21)
    want = _reference(model, tok, rows)
    # 1-position logit chunks and batches of ~2 rows, and the unbounded path: all the same.
    _assert_same(row_losses(model, tok, rows, batch_size=32, token_budget=300,
                            logits_mb=0.001), want)
    _assert_same(row_losses(model, tok, rows, batch_size=4), want)
    # Through a PEFT wrapper the adapter applies (a non-zero LoRA changes the loss).
    torch.manual_seed(0)
    peft = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear",
                                            init_lora_weights=False)).eval()
    tuned = _reference(peft, tok, rows)
    assert [x for x, _ in tuned] != pytest.approx([x for x, _ in want], rel=1e-3)
    _assert_same(row_losses(peft, tok, rows, token_budget=500, logits_mb=0.01), tuned)


def test_chunked_loss_equals_the_full_logits_loss_on_a_real_vocabulary(real_model):
    from llmops.backends.generation import load_model
    from llmops.backends.heldout import row_losses

    model, tok = load_model(real_model("qwen2"))
    rows = task_api.generate(4, seed=5)
    want = _reference(model, tok, rows)
    assert max(c for _, c in want) > 10
    # 2 MiB of fp32 logits = 3 positions of 151,936 at a time; batches of one or two rows.
    _assert_same(row_losses(model, tok, rows, token_budget=900, logits_mb=2), want)


def test_a_model_that_post_processes_its_logits_goes_through_its_own_forward(tiny_base):
    """Gemma 2 soft-caps its logits after the head: the loss must still be the model's."""
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from llmops.backends.generation import load_tokenizer
    from llmops.backends.heldout import _output_head, row_losses

    tok = load_tokenizer(tiny_base)
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(Gemma2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16,
        final_logit_softcapping=0.5)).eval()
    assert _output_head(model) is None
    rows = task_api.generate(4, seed=3)
    _assert_same(row_losses(model, tok, rows, token_budget=400, logits_mb=0.01),
                 _reference(model, tok, rows))


# ---- out of memory: the batch halves and the rest is retried ----

def _oom_above(model, rows: int):
    """Makes the decoder raise a real CUDA out-of-memory error on batches of more than `rows`
    rows (a fault injection: there is no GPU here); returns the hook handle."""
    import torch

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[0] > rows:
            raise torch.cuda.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")

    return model.get_decoder().register_forward_pre_hook(hook, with_kwargs=True)


def test_generation_and_loss_halve_the_batch_on_out_of_memory(tiny_base):
    from llmops.backends.generation import generate, load_model
    from llmops.backends.heldout import row_losses

    model, tok = load_model(tiny_base)
    rows = task_api.generate(8, seed=2)
    want_answers, _ = generate(model, tok, rows, max_new_tokens=6, batch_size=8,
                               show_progress=False)
    want_losses = row_losses(model, tok, rows, batch_size=8)
    handle = _oom_above(model, 2)
    try:
        retries: list[dict] = []
        answers, _ = generate(model, tok, rows, max_new_tokens=6, batch_size=8,
                              token_budget=100_000, show_progress=False, oom_retries=retries)
        assert answers == want_answers
        assert retries == [
            {"phase": "generation", "rows": [8, 4], "token_budget": [100_000, 50_000]},
            {"phase": "generation", "rows": [4, 2], "token_budget": [50_000, 25_000]}]
        retries.clear()
        _assert_same(row_losses(model, tok, rows, batch_size=3, oom_retries=retries),
                     want_losses)
        assert retries == [{"phase": "held-out loss", "rows": [3, 1], "token_budget": [None, None]}]
    finally:
        handle.remove()


def test_one_row_out_of_memory_names_the_knobs_and_other_errors_pass_through(tiny_base):
    from llmops.backends.generation import generate, load_model
    from llmops.errors import StageError

    model, tok = load_model(tiny_base)
    rows = task_api.generate(2, seed=2)
    handle = _oom_above(model, 0)
    try:
        with pytest.raises(StageError, match="out of memory in the generation on a single row"):
            generate(model, tok, rows, max_new_tokens=4, batch_size=2, show_progress=False)
    finally:
        handle.remove()

    def broken(module, args, kwargs):
        raise RuntimeError("shape mismatch")

    handle = model.get_decoder().register_forward_pre_hook(broken, with_kwargs=True)
    try:
        with pytest.raises(RuntimeError, match="shape mismatch"):
            generate(model, tok, rows, max_new_tokens=4, batch_size=2, show_progress=False)
    finally:
        handle.remove()


def test_the_eval_report_lists_each_halving(tiny_base):
    import logging

    from llmops.backends.generation import load_model
    from llmops.core.context import StageContext
    from llmops.stages.eval_base import evaluate_model

    model, tok = load_model(tiny_base)
    rows = task_api.generate(6, seed=4)
    params = {"max_new_tokens": 4, "batch_size": 32, "token_budget": 100_000, "logits_mb": 1.0,
              "worst_examples": 1}
    ctx = StageContext(run_dir=tiny_base, logger=logging.getLogger("t"), show_progress=False)
    handle = _oom_above(model, 3)
    try:
        report = evaluate_model(model, tok, rows, params, ctx, desc="test")
    finally:
        handle.remove()
    assert report["oom_retries"] == [
        {"phase": "generation", "rows": [6, 3], "token_budget": [100_000, 50_000]},
        {"phase": "held-out loss", "rows": [6, 3], "token_budget": [100_000, 50_000]}]
    assert report["metrics"]["loss"] is not None
