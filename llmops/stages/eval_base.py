"""Stage "eval_base": evaluates the base model once on the test split -> base_eval.json.

Every job of a sweep shares this stage's cached output, so the base model is evaluated once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llmops.compiler.builders.eval_base import EvalBaseParams
from llmops.core.context import StageContext
from llmops.core.plan import report_name
from llmops.errors import StageError

REPORT_NAME = report_name("eval_base")
N_SAMPLES = 20


def load_test_rows(params: Mapping[str, Any], inputs: Mapping[str, Path], stage: str) -> list[dict]:
    """Reads data's test.jsonl, cut to params["limit"] rows when set.

    Raises:
        StageError: If there is no data input, no test.jsonl, or it holds no rows.
    """
    from llmops.files import read_jsonl

    if inputs.get("data") is None:
        raise StageError(f"{stage}: no 'data' input. The plan must run the data stage first.")
    path = Path(inputs["data"]) / "test.jsonl"
    if not path.is_file():
        raise StageError(f"{stage}: test split {path} is missing. Rerun the data stage.")
    rows = read_jsonl(path)
    limit = params.get("limit")
    if limit is not None:
        rows = rows[: int(limit)]
    if not rows:
        raise StageError(
            f"{stage}: test split {path} has no rows (limit={limit}). "
            "Raise data.test_fraction or data.n_examples, or eval.limit."
        )
    return rows


def eval_quant(params: Mapping[str, Any], ctx: StageContext) -> dict | None:
    """Returns the quant params to evaluate with: the configured ones on a GPU, none on a CPU."""
    quant = params["quant"]
    if quant["type"] != "none" and not ctx.device.startswith("cuda"):
        ctx.logger.info(
            "quant.type=%s applies on a GPU only; evaluating in float32 on the CPU.", quant["type"]
        )
        return None
    return quant


def evaluate_model(
    model: Any,
    tokenizer: Any,
    rows: list[dict],
    params: Mapping[str, Any],
    ctx: StageContext,
    desc: str,
) -> dict[str, Any]:
    """Generates answers for the rows, measures the held-out loss, and scores both by row kind.

    Returns:
        {"metrics", "by_kind", "stats", "n", "samples", "predictions", "answer_syntax",
        "worst_examples", "seconds", "oom_retries", "reasoning"}: whole-split metrics, metrics
        by row kind (tool, refusal, text), each gateable metric's value/n/sd (for tolerance by
        split size), the first N_SAMPLES rows with prompt, reference, prediction and exact,
        every answer, the call syntax the answers were read in (``parsers.syntax_of`` the
        template: hermes, llama3_json, task_api; None when it writes no calls), the worst rows
        per metric, each out-of-memory halving of a batch ({"phase", "rows": [from, to],
        "token_budget": [from, to]}; ``llmops.backends.oom``), and the answers that began with
        reasoning ({"rows", "tokens"}; the answer after it is what is scored).
    """
    from llmops.backends.generation import generate
    from llmops.backends.heldout import row_losses
    from llmops.backends.templates import answer_parser
    from llmops.scoring.examples import worst_examples
    from llmops.scoring.parsers import syntax_of
    from llmops.scoring.split import add_losses, reference_text, score_split

    start = time.perf_counter()
    retries: list[dict[str, Any]] = []
    predictions, prompts = generate(
        model,
        tokenizer,
        rows,
        max_new_tokens=int(params["max_new_tokens"]),
        batch_size=int(params["batch_size"]),
        show_progress=ctx.show_progress,
        desc=desc,
        threads=ctx.threads,
        token_budget=int(params["token_budget"]),
        oom_retries=retries,
    )
    losses = row_losses(model, tokenizer, rows, int(params["batch_size"]), ctx.threads,
                        token_budget=int(params["token_budget"]),
                        logits_mb=float(params["logits_mb"]), oom_retries=retries,
                        reasoning=params.get("reasoning", "train"))  # NotRequired: context only
    seconds = time.perf_counter() - start
    scored = score_split(rows, predictions, answer_parser(tokenizer))
    add_losses(scored, losses)
    per_row = scored["per_row"]
    samples = [
        {
            "prompt": prompts[i],
            "reference": reference_text(rows[i]),
            "prediction": predictions[i],
            "kind": per_row[i]["kind"],
            "exact": bool(per_row[i]["exact"]),
        }
        for i in range(min(N_SAMPLES, len(rows)))
    ]
    m = scored["metrics"]
    ctx.logger.info(
        "%s: exact_match=%s loss=%s on %d rows (%s) in %.1f s", desc, m["exact_match"], m["loss"],
        len(rows), ", ".join(f"{k} {v}" for k, v in m["counts"].items() if k != "total"), seconds,
    )
    return {"metrics": m, "by_kind": scored["by_kind"], "stats": scored["samples"],
            "n": len(rows), "samples": samples, "predictions": predictions,
            "answer_syntax": syntax_of(tokenizer.chat_template),
            "worst_examples": worst_examples(rows, predictions, per_row,
                                             int(params["worst_examples"])),
            "seconds": round(seconds, 3), "oom_retries": retries,
            "reasoning": reasoning_counts(tokenizer, predictions, scored["reasoning"])}


def reasoning_counts(tokenizer: Any, predictions: list[str], found: Mapping[str, Any]
                     ) -> dict[str, int]:
    """Returns {"rows", "tokens"}: the answers that began with reasoning and its tokens in the
    model's tokenizer (left out of scoring: ``llmops.scoring.split.score_split``)."""
    from llmops.scoring.parsers import split_reasoning

    texts = [r for r, _ in map(split_reasoning, predictions) if r is not None]
    tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]) \
        if texts else 0
    return {"rows": int(found["rows"]), "tokens": tokens}


def evaluate_api(model: str, rows: list[dict], params: Mapping[str, Any], ctx: StageContext,
                 desc: str) -> dict[str, Any]:
    """Evaluates a model served by OpenAI's API (train.backend=openai) on the rows: the answers
    come from its chat completions with each row's tools (``llmops.serving.chat_api``) and are
    scored by the same scorers as a local model's; there is no held-out loss (the API gives no
    log-probabilities of a reference). Returns what ``evaluate_model`` returns, "model" added.
    """
    from llmops.scoring.examples import worst_examples
    from llmops.scoring.parsers import get_parser
    from llmops.scoring.split import add_losses, reference_text, score_split
    from llmops.serving.chat_api import API_SYNTAX, answer_rows, client

    start = time.perf_counter()
    api = client(params["api"]["base_url"], timeout_s=300)
    predictions, prompts = answer_rows(api, model, rows, int(params["max_new_tokens"]),
                                       ctx.show_progress, desc)
    seconds = time.perf_counter() - start
    scored = score_split(rows, predictions, get_parser(API_SYNTAX))
    add_losses(scored, [None] * len(rows))
    per_row, m = scored["per_row"], scored["metrics"]
    samples = [{"prompt": prompts[i], "reference": reference_text(rows[i]),
                "prediction": predictions[i], "kind": per_row[i]["kind"],
                "exact": bool(per_row[i]["exact"])} for i in range(min(N_SAMPLES, len(rows)))]
    ctx.logger.info("%s: %s exact_match=%s on %d rows in %.1f s", desc, model, m["exact_match"],
                    len(rows), seconds)
    return {"metrics": m, "by_kind": scored["by_kind"], "stats": scored["samples"],
            "n": len(rows), "samples": samples, "predictions": predictions,
            "answer_syntax": API_SYNTAX, "model": model,
            "worst_examples": worst_examples(rows, predictions, per_row,
                                             int(params["worst_examples"])),
            "seconds": round(seconds, 3), "oom_retries": [],
            "reasoning": {"rows": int(scored["reasoning"]["rows"]), "tokens": None}}


def evaluate_base(
    params: Mapping[str, Any], inputs: Mapping[str, Path], ctx: StageContext, stage: str
):
    """Loads the base model and evaluates it on the test rows (see evaluate_model); with
    train.backend=openai asks the API's base model id instead (``evaluate_api``)."""
    from llmops.backends.generation import load_model
    from llmops.stages.common import base_model_path, set_seed

    set_seed(ctx.seed)
    rows = load_test_rows(params, inputs, stage)
    if "api" in params:
        return evaluate_api(params["api"]["model"], rows, params, ctx, desc=f"{stage}: base")
    model, tokenizer = load_model(
        base_model_path(params, inputs),
        quant=eval_quant(params, ctx),
        device=ctx.device,
        trust_remote_code=bool(params["model"]["trust_remote_code"]),
        chat_template=params["model"]["chat_template"],
    )
    return evaluate_model(model, tokenizer, rows, params, ctx, desc=f"{stage}: base")


def run(params: EvalBaseParams, inputs: dict[str, Path], out_dir: Path, ctx: StageContext) -> dict:
    """Evaluates the base model on data's test.jsonl and writes base_eval.json.

    Params read: model (hub_id, trust_remote_code, chat_template), quant, max_new_tokens,
    batch_size, token_budget, logits_mb, limit, worst_examples.
    Inputs: "data" (test.jsonl), "base" for the tiny model.

    Returns:
        What ``evaluate_model`` returns.
    """
    from llmops.files import write_json

    report = evaluate_base(params, inputs, ctx, stage="eval_base")
    write_json(Path(out_dir) / REPORT_NAME, report)
    return report
