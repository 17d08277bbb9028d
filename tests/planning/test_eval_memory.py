"""The eval stages' memory estimate (llmops/planning/eval_memory.py): its arithmetic, its batching,
and a real eval on a real vocabulary staying within it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llmops.planning.eval_memory import (
    GEN_LOGIT_COPIES,
    HARNESS_LOGIT_COPIES,
    LOGIT_COPIES,
    MIB,
    eval_parts,
    harness_batch,
    kv_bytes_per_token,
    lm_eval_parts,
    logits_chunk_positions,
    token_batches,
)

QWEN_SMALL = {"hidden_size": 64, "num_layers": 2, "num_attention_heads": 4, "num_kv_heads": 2,
              "intermediate_size": 128, "vocab_size": 151_936, "params": 9_800_000,
              "tie_embeddings": True}
QWEN3B = {"hidden_size": 2048, "num_layers": 36, "num_attention_heads": 16, "num_kv_heads": 2,
          "intermediate_size": 11008, "vocab_size": 151_936, "params": 3_090_000_000,
          "tie_embeddings": True}
EVAL = {"batch_size": 32, "max_new_tokens": 96, "token_budget": 8192, "logits_mb": 128.0}
CPU, GPU = {"device": "cpu"}, {"device": "cuda"}


def test_token_batches_keep_the_budget_and_at_least_one_row():
    lengths = [100, 900, 300, 5000, 200, 250]
    batches = token_batches(lengths, max_rows=3, token_budget=1000)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        width = max(lengths[i] for i in b)
        assert len(b) <= 3 and (len(b) == 1 or len(b) * width <= 1000)
    assert [3] in batches  # longer than the budget: alone
    assert batches[0] == [0, 4, 5]  # shortest first, 3 x 250 <= 1000
    assert token_batches(lengths, max_rows=2, token_budget=None) == [[0, 4], [5, 2], [1, 3]]


def test_logit_chunks_and_the_harness_batch_follow_the_vocabulary():
    assert logits_chunk_positions(151_936, 128) == 128 * MIB // (4 * 151_936) == 220
    assert logits_chunk_positions(512, 128) == 65_536
    assert logits_chunk_positions(151_936, 0.001) == 1
    assert harness_batch(151_936, 128, 1000, 16) == 1  # one request, however long
    assert harness_batch(512, 128, 300, 16) == 16  # the configured cap
    assert harness_batch(32_000, 128, 300, 64) == 3


def test_eval_parts_arithmetic():
    parts, notes = eval_parts(QWEN_SMALL, None, EVAL, CPU, 1000, adapter=False)
    assert parts["weights"] == 9_800_000 * 4  # fp32 on a CPU
    assert parts["adapter"] == 0
    # 8 rows of 1000 tokens fill the budget: the loss phase peaks, 220 positions of logits at once.
    assert parts["loss_logits"] == 220 * 151_936 * 4 * LOGIT_COPIES["cpu"]
    assert parts["kv_cache"] == parts["gen_logits"] == 0
    assert any("peak in the held-out loss" in n for n in notes)
    # The budget bounds the loss: twice the budget, twice the activations; logits unchanged.
    double, _ = eval_parts(QWEN_SMALL, None, {**EVAL, "token_budget": 16384}, CPU, 1000, False)
    assert double["loss_activations"] == pytest.approx(2 * parts["loss_activations"], rel=0.01)
    assert double["loss_logits"] == parts["loss_logits"]
    # Fewer rows than the budget allows: rows x length.
    few, _ = eval_parts(QWEN_SMALL, None, {**EVAL, "batch_size": 2}, CPU, 1000, False)
    assert few["loss_activations"] == pytest.approx(parts["loss_activations"] / 4, rel=0.01)

    # A 3B model on a GPU, short prompts, long answers, a large budget: the KV cache peaks.
    long = {**EVAL, "max_new_tokens": 4000, "token_budget": 65536}
    gpu, notes = eval_parts(QWEN3B, {"type": "none"}, long, GPU, 200, adapter=True,
                            lora={"r": 16, "target_modules": "all-linear"})
    assert gpu["weights"] == 3_090_000_000 * 2  # bf16
    assert gpu["adapter"] > 0
    rows = 65536 // (200 + 4000)
    assert gpu["kv_cache"] == rows * 4200 * kv_bytes_per_token(QWEN3B, 2)
    assert kv_bytes_per_token(QWEN3B, 2) == 36 * 2 * 2 * 128 * 2
    assert gpu["gen_logits"] == rows * 151_936 * 4 * GEN_LOGIT_COPIES
    assert gpu["loss_activations"] == gpu["loss_logits"] == 0
    assert any("peak in generation" in n for n in notes)
    # nf4 on a GPU loads fewer bytes; on a CPU quant is not applied.
    nf4 = {"type": "nf4", "double_quant": True}
    assert eval_parts(QWEN3B, nf4, EVAL, GPU, 1000, False)[0]["weights"] < gpu["weights"] / 2
    assert eval_parts(QWEN3B, nf4, EVAL, CPU, 1000, False)[0]["weights"] == 3_090_000_000 * 4


def test_lm_eval_parts_hold_one_request_of_full_logits_on_a_real_vocabulary():
    parts, notes = lm_eval_parts(QWEN_SMALL, None, {"batch_size": 16, "max_gen_toks": 96,
                                                    "logits_mb": 128.0}, CPU, 1000, False)
    # batch 1: the request's logits, their log_softmax and a temporary
    assert parts["harness_logits"] == 1 * 1000 * 151_936 * 4 * HARNESS_LOGIT_COPIES
    assert any("harness batch 1" in n for n in notes)


def test_the_estimate_imports_no_torch():
    code = ("import sys, llmops.planning.eval_memory; "
            "sys.exit('torch' in sys.modules or 'transformers' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


MEASURE = r'''
import json, logging, sys, tempfile
from pathlib import Path
model_dir, n_tokens, params = Path(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
from transformers import AutoTokenizer
from llmops.data import task_api
from llmops.core.context import StageContext
from llmops.stages import eval_base
tok = AutoTokenizer.from_pretrained(str(model_dir))
rows = task_api.generate(8, seed=1)
words = "please check the schedule and the notes for the weekly planning meeting".split()
for k, row in enumerate(rows):  # pad each prompt to ~n_tokens, lengths differing a little
    m = row["messages"]
    have = len(tok.apply_chat_template(m, tools=row.get("tools"), tokenize=True,
                                       return_dict=False))
    fill = " ".join(words[j % len(words)] for j in range(max(0, n_tokens - have - 5 * k)))
    next(x for x in m if x["role"] == "user")["content"] += " " + fill
out = Path(tempfile.mkdtemp())
(out / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
del tok
ctx = StageContext(run_dir=out, logger=logging.getLogger("m"), show_progress=False, threads=1)
eval_base.run(params, {"data": out, "base": model_dir}, out, ctx)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child of a big process
# would report its parent's size.
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"peak": int(hwm.split()[1]) * 1024}))
'''


def _facts(folder: Path) -> dict:
    from safetensors import safe_open

    c = json.loads((folder / "config.json").read_text())
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        params = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
    return {"hidden_size": c["hidden_size"], "num_layers": c["num_hidden_layers"],
            "num_attention_heads": c["num_attention_heads"],
            "num_kv_heads": c["num_key_value_heads"], "intermediate_size": c["intermediate_size"],
            "vocab_size": c["vocab_size"], "params": params,
            "tie_embeddings": c["tie_word_embeddings"]}


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def test_a_real_eval_on_a_real_vocabulary_stays_within_the_estimate(real_model):
    """eval_base on the 151,936-token Qwen2 vocabulary with ~1,000-token rows: the peak RSS of a
    fresh process is within 0.8-1.25 of the estimate (the old code grew by GBs here)."""
    folder = real_model("qwen2")
    params = {"model": {"name": "q", "hub_id": None, "chat_template": None,
                        "trust_remote_code": False},
              "quant": {"type": "none"}, "max_new_tokens": 8, "batch_size": 32,
              "token_budget": 8192, "logits_mb": 128.0, "limit": None, "worst_examples": 3}
    r = subprocess.run([sys.executable, "-c", MEASURE, str(folder), "1000", json.dumps(params)],
                       capture_output=True, text=True, timeout=600,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    measured = json.loads(r.stdout.strip().splitlines()[-1])["peak"]
    parts, _ = eval_parts(_facts(folder), None, params, CPU, 1000, adapter=False)
    estimate = sum(parts.values())
    print(f"estimate {estimate / MIB:.0f} MiB, measured {measured / MIB:.0f} MiB")
    assert 0.8 <= estimate / measured <= 1.25, (estimate / MIB, measured / MIB, parts)
