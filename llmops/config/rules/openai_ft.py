"""Cross-field rules of train.backend=openai: what composes with it, the upload consent and the
cost cap, all at compile time (nothing is sent or spent without the user's say). Pure.

``upload_estimate`` is what would be uploaded and what it would cost, estimated before the data
stage runs: for data=task_api from a sample of the rows the data stage will generate (rows from
data.n_examples and the split fractions); for files and hub data the rows are not known before
the data stage runs, so the cap is checked there, before anything is uploaded.
"""

from __future__ import annotations

import functools
from typing import Any

from llmops.config.schema import AppConfig
from llmops.errors import Problem
from llmops.planning import openai_ft

#: Rows of the task_api sample the compile-time estimate measures.
SAMPLE_ROWS = 64


@functools.lru_cache(maxsize=16)
def _task_api_sample(seed: int) -> tuple[Any, ...]:
    from llmops.data import task_api

    return tuple(task_api.generate(SAMPLE_ROWS, seed=seed))


def upload_estimate(cfg: AppConfig) -> dict[str, Any]:
    """Returns what the sft stage would upload and its cost (``openai_ft.estimate``), plus
    "files" (the file names uploaded) and "rows_from" (how the row counts are known)."""
    o, d = cfg.train.openai, cfg.data
    epochs = openai_ft.epochs_of(o.n_epochs, cfg.train.epochs)
    if d.source == "task_api":
        n_val = round(d.n_examples * d.val_fraction)
        n_train = round(d.n_examples * (1 - d.val_fraction - d.test_fraction))
        sample: tuple[Any, ...] = _task_api_sample(d.seed)
        rows_from = f"data.n_examples={d.n_examples} less the held-out shares; tokens from " \
                    f"{SAMPLE_ROWS} sample rows"
    else:
        n_train = n_val = None
        sample = ()
        rows_from = f"data.source={d.source}: known once the data stage has run (the stage " \
                    "checks the cap before uploading)"
    est = openai_ft.estimate(sample, n_train, n_val, o.model, epochs,
                             o.price_per_1m_training_tokens_usd)
    return {**est, "files": ["train.jsonl", "val.jsonl"], "rows_from": rows_from,
            "max_cost_usd": o.max_cost_usd}


def openai_problems(cfg: AppConfig) -> list[Problem]:
    """Returns the problems of a train.backend=openai plan: a method, merge, distributed group,
    lm_eval tasks or GGUF deploy it cannot do, the missing upload consent (not for a dry run,
    which uploads nothing) and an estimate above the cost cap."""
    t = cfg.train
    if t.backend != "openai" or t.method == "none":
        return []
    out = []
    if t.method != "sft":
        out.append(Problem("train.backend", f"'openai' fine-tunes with train=sft only (got "
                                            f"train={t.method}). Use train=sft, or "
                                            "train.backend=hf for the preference methods."))
    if cfg.merge.method != "none":
        out.append(Problem("merge", "train.backend=openai trains a hosted model: there is no "
                                    "adapter to merge. Use merge=none."))
    if cfg.distributed.strategy != "none":
        out.append(Problem("distributed", "train.backend=openai trains on OpenAI's machines. "
                                          "Use distributed=none."))
    if cfg.eval.lm_eval.tasks:
        out.append(Problem("eval.lm_eval.tasks", "the harness needs the model's weights, which "
                                                 "train.backend=openai does not have. Use "
                                                 "eval.lm_eval.tasks=[]."))
    if cfg.deploy.target in ("ollama", "openai"):
        out.append(Problem("deploy.target", f"'{cfg.deploy.target}' serves a GGUF export, "
                                            "which train.backend=openai does not plan (the model "
                                            "stays at OpenAI). Use deploy=local: its "
                                            "integration_config.json names the fine-tuned model."))
    if not t.openai.upload_consent and not cfg.dry_run:
        est = upload_estimate(cfg)
        what = f"{est['train_rows']} train + {est['val_rows']} validation rows" \
            if est["train_rows"] is not None else "the train and validation splits"
        out.append(Problem("train.openai.upload_consent", (
            f"train.backend=openai uploads {what} to OpenAI, a third party, and that needs "
            "your consent (false). Set train.openai.upload_consent=true to agree, or "
            "dry_run=true to see what would be uploaded.")))
    est = upload_estimate(cfg)
    if est["cost_usd"] is not None and est["cost_usd"] > t.openai.max_cost_usd:
        out.append(Problem("train.openai.max_cost_usd", (
            f"the job is estimated at ${est['cost_usd']:,.2f} ({est['train_tokens']:,} tokens x "
            f"{est['epochs']:g} epochs x ${t.openai.price_per_1m_training_tokens_usd:g}/1M; "
            f"tokens {est['token_count']}), above the cap ${t.openai.max_cost_usd:,.2f}. "
            "Raise train.openai.max_cost_usd, or lower data.n_examples or "
            "train.openai.n_epochs.")))
    return out
