"""Stage "eval_base": evaluates the base model once on the test split -> base_eval.json.

Every job of a sweep shares this stage's cached output, so the base model is evaluated once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llmops.compiler.plan import report_name
from llmops.errors import StageError
from llmops.runner.context import StageContext

REPORT_NAME = report_name("eval_base")
N_SAMPLES = 20


def load_test_rows(params: Mapping[str, Any], inputs: Mapping[str, Path], stage: str) -> list[dict]:
    """Reads data's test.jsonl, cut to params["limit"] rows when set.

    Raises:
        StageError: If there is no data input, no test.jsonl, or it holds no rows.
    """
    from llmops.backends.common import read_jsonl

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
    quant = params.get("quant") or None
    if quant and quant.get("type", "none") != "none" and not ctx.device.startswith("cuda"):
        ctx.logger.info(
            "quant.type=%s applies on a GPU only; evaluating in float32 on the CPU.", quant["type"]
        )
        return None
    return quant


def _reference(row: Mapping[str, Any]) -> Any:
    """Returns a row's reference answer for samples: its text, or its calls as name + arguments."""
    last = row["messages"][-1]
    if last.get("tool_calls"):
        return [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                for c in last["tool_calls"]]
    return last.get("content")


def evaluate_model(
    model: Any,
    tokenizer: Any,
    rows: list[dict],
    params: Mapping[str, Any],
    ctx: StageContext,
    desc: str,
) -> dict[str, Any]:
    """Generates answers for the rows and scores them.

    Returns:
        {"metrics", "n", "samples", "seconds"}; samples are the first N_SAMPLES rows with prompt,
        reference, prediction and exact.
    """
    from llmops.backends.generation import generate
    from llmops.scoring.parsers import parser_for
    from llmops.scoring.tools import score_tool_rows

    start = time.perf_counter()
    predictions, prompts = generate(
        model,
        tokenizer,
        rows,
        max_new_tokens=int(params.get("max_new_tokens", 96)),
        batch_size=int(params.get("batch_size", 32)),
        show_progress=ctx.show_progress,
        desc=desc,
        threads=ctx.threads,
    )
    seconds = time.perf_counter() - start
    parse = parser_for(getattr(tokenizer, "chat_template", None))
    metrics, per_row = score_tool_rows(rows, predictions, parse)
    samples = [
        {
            "prompt": prompts[i],
            "reference": _reference(rows[i]),
            "prediction": predictions[i],
            "exact": None if per_row[i] is None else per_row[i]["exact"],
        }
        for i in range(min(N_SAMPLES, len(rows)))
    ]
    ctx.logger.info(
        "%s: exact_match=%s on %d rows in %.1f s", desc, metrics["exact_match"], len(rows), seconds
    )
    return {"metrics": metrics, "n": len(rows), "samples": samples, "seconds": round(seconds, 3)}


def evaluate_base(
    params: Mapping[str, Any], inputs: Mapping[str, Path], ctx: StageContext, stage: str
):
    """Loads the base model and evaluates it on the test rows (see evaluate_model)."""
    from llmops.backends.common import base_model_path, set_seed
    from llmops.backends.generation import load_model

    set_seed(ctx.seed)
    rows = load_test_rows(params, inputs, stage)
    model, tokenizer = load_model(
        base_model_path(params, inputs),
        quant=eval_quant(params, ctx),
        device=ctx.device,
        trust_remote_code=bool((params.get("model") or {}).get("trust_remote_code", False)),
    )
    return evaluate_model(model, tokenizer, rows, params, ctx, desc=f"{stage}: base")


def run(params: dict, inputs: dict[str, Path], out_dir: Path, ctx: StageContext) -> dict:
    """Evaluates the base model on data's test.jsonl and writes base_eval.json.

    Params read: model (hub_id, trust_remote_code), quant, max_new_tokens, batch_size, limit.
    Inputs: "data" (test.jsonl), "base" for the tiny model.

    Returns:
        {"metrics", "n", "samples", "seconds"}.
    """
    from llmops.backends.common import write_json

    report = evaluate_base(params, inputs, ctx, stage="eval_base")
    write_json(Path(out_dir) / REPORT_NAME, report)
    return report
