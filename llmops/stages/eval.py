"""Stage "eval": evaluates the tuned model, compares it with the base, applies gates.

Writes eval_report.json {base, tuned, gates, passed, gate_choice, metrics_by_kind, worst_examples,
deltas, n, samples, answer_syntax, seconds, oom_retries, reasoning}; oom_retries lists each
out-of-memory halving of a batch, base's and tuned's ({"model", "phase", "rows": [from, to],
"token_budget": [from, to]}); answer_syntax is the call syntax the answers were read in (the
model's own template's: hermes, llama3_json, task_api); reasoning counts, base's and tuned's, the
answers that began with reasoning and its tokens ({"rows", "tokens"}): the answer after it is what
is scored. A failed gate is reported, never raised: the runner decides from params["enforce"]
whether the plan stops.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llmops.compiler.builders.eval import EvalParams
from llmops.core.context import StageContext
from llmops.core.plan import TUNED_STAGES, report_name
from llmops.errors import StageError

REPORT_NAME = report_name("eval")


def tuned_artifact(sft_dir: Path, stage: str) -> tuple[str, Path]:
    """Finds what the sft stage produced.

    Returns:
        ("adapter", sft_dir/adapter) or ("model", sft_dir/model).

    Raises:
        StageError: If the sft folder holds neither.
    """
    sft_dir = Path(sft_dir)
    artifact = None
    for producer in reversed(TUNED_STAGES):  # sft, dpo, merge
        report = sft_dir / report_name(producer)
        if report.is_file():
            artifact = json.loads(report.read_text(encoding="utf-8")).get("artifact")
            break
    for kind in ([artifact] if artifact else []) + ["adapter", "model"]:
        if kind in ("adapter", "model") and (sft_dir / kind).is_dir():
            return kind, sft_dir / kind
    raise StageError(
        f"{stage}: {sft_dir} holds neither adapter/ nor model/ (artifact={artifact!r}). "
        "Rerun the sft stage."
    )


def tuned_input(inputs: dict[str, Path]) -> tuple[str, Path] | None:
    """Returns (stage, folder) of the model to evaluate/export: merge, else dpo, else sft."""
    for stage in TUNED_STAGES:
        if inputs.get(stage) is not None:
            return stage, Path(inputs[stage])
    return None


def api_model_id(sft_dir: Path) -> str:
    """Returns the fine-tuned model id of a train.backend=openai sft stage (its report).

    Raises:
        StageError: If the report is missing or names no fine-tuned model.
    """
    path = Path(sft_dir) / report_name("sft")
    try:
        model = json.loads(path.read_text(encoding="utf-8")).get("fine_tuned_model")
    except (OSError, json.JSONDecodeError) as e:
        raise StageError(f"eval: cannot read {path} ({e}). Rerun the sft stage.") from e
    if not model:
        raise StageError(f"eval: {path} names no fine_tuned_model. Rerun the sft stage.")
    return str(model)


def read_base_eval(inputs: dict[str, Path]) -> dict[str, Any] | None:
    """Reads eval_base's base_eval.json, or returns None when there is no eval_base input.

    Raises:
        StageError: If the eval_base input exists but its report is missing or unreadable.
    """
    if inputs.get("eval_base") is None:
        return None
    path = Path(inputs["eval_base"]) / report_name("eval_base")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise StageError(f"eval: cannot read {path} ({e}). Rerun the eval_base stage.") from e
    if not isinstance(report.get("metrics"), dict):
        raise StageError(f"eval: {path} has no 'metrics' mapping. Rerun the eval_base stage.")
    return report


def _by_kind(base: Mapping[str, Any], tuned: Mapping[str, Any]) -> dict[str, Any]:
    """Returns metrics_by_kind: per row kind, its count and the base and tuned metrics."""
    from llmops.scoring.metric_names import KINDS

    out = {}
    for kind in KINDS:
        b, t = dict(base["by_kind"][kind]), dict(tuned["by_kind"][kind])
        count = t.pop("count")
        b.pop("count", None)
        out[kind] = {"count": count, "base": b, "tuned": t}
    return out


def _view(side: Mapping[str, Any]) -> dict[str, Any]:
    """Returns one model's metrics by gate name: whole-split names and KIND.METRIC names."""
    view = dict(side["metrics"])
    for kind, metrics in side["by_kind"].items():
        view.update({f"{kind}.{k}": v for k, v in metrics.items() if k != "count"})
    return view


def _choice(params: Mapping[str, Any], gates: list[dict[str, Any]],
            counts: Mapping[str, int]) -> dict[str, Any]:
    """Returns how the gates were chosen: mode, the split's rows by kind, applied and skipped."""
    return {
        "mode": params["gate_mode"],
        "rows": {k: v for k, v in counts.items() if k != "total"},
        "applied": [g["name"] for g in gates if not g.get("skipped")],
        "skipped": {g["name"]: g.get("reason") for g in gates if g.get("skipped")},
    }


def _worst(tuned: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, list[dict]]:
    """Returns the tuned model's worst examples, each with the base model's answer to the row."""
    answers = base.get("predictions") or []
    return {metric: [{**ex, "base_prediction": answers[ex["row"]]
                      if ex["row"] < len(answers) else None} for ex in examples]
            for metric, examples in tuned["worst_examples"].items()}


def _log_gates(gates: list[dict[str, Any]], ctx: StageContext) -> None:
    for gate in gates:
        ctx.logger.info(
            "gate %s: %s=%s vs %s (%s) -> %s",
            gate["name"],
            gate["metric"],
            gate["value"],
            gate["threshold"],
            gate["direction"],
            "skipped" if gate.get("skipped") else ("pass" if gate["passed"] else "FAIL"),
        )


def run(params: EvalParams, inputs: dict[str, Path], out_dir: Path, ctx: StageContext) -> dict:
    """Evaluates base + adapter (or the fully fine-tuned model) and checks the quality gates.

    Params read: model (hub_id, trust_remote_code, chat_template), quant, max_new_tokens,
    batch_size, token_budget, logits_mb, limit, worst_examples, gates (resolved:
    ``llmops.scoring.gates.choose_gates``), gate_mode, confidence. (enforce is read by the
    runner, not here.)
    Inputs: "data" (test.jsonl), "sft" (adapter/ or model/), "eval_base" (base_eval.json; when
    absent the base is evaluated here), "base" for the tiny model.

    Returns:
        The report written to eval_report.json.
    """
    from llmops.backends.generation import load_model
    from llmops.files import write_json
    from llmops.scoring.gates import check_gates, validate_gates
    from llmops.scoring.split import deltas
    from llmops.stages.common import base_model_path, set_seed
    from llmops.stages.eval_base import (
        eval_quant,
        evaluate_api,
        evaluate_base,
        evaluate_model,
        load_test_rows,
    )

    start = time.perf_counter()
    problems = validate_gates(params.get("gates"))
    if problems:  # fail before the slow part
        raise StageError("eval: invalid gates: " + "; ".join(map(str, problems)))
    tuned_in = tuned_input(inputs)
    if tuned_in is None:
        raise StageError("eval: no 'sft' input. The plan must run the sft stage first.")
    tuned_stage, tuned_dir = tuned_in
    artifact, path = tuned_artifact(tuned_dir, "eval") if "api" not in params \
        else ("api_model", tuned_dir)
    base_report = read_base_eval(inputs)
    if base_report is None or "by_kind" not in base_report:
        ctx.logger.info("eval: no eval_base report by row kind; evaluating the base model here.")
        base_report = evaluate_base(params, inputs, ctx, stage="eval")

    set_seed(ctx.seed)
    rows = load_test_rows(params, inputs, "eval")
    if base_report.get("n") not in (None, len(rows)):
        ctx.logger.warning(
            "eval: base was evaluated on %s rows, tuned on %d; compare with care.",
            base_report.get("n"),
            len(rows),
        )
    if "api" in params:  # train.backend=openai: the fine-tuned model id of sft's report
        tuned = evaluate_api(api_model_id(tuned_dir), rows, params, ctx, desc="eval: tuned")
    else:
        model, tokenizer = load_model(
            base_model_path(params, inputs),
            adapter=path if artifact == "adapter" else None,
            full_model=path if artifact == "model" else None,
            quant=eval_quant(params, ctx),
            device=ctx.device,
            trust_remote_code=bool(params["model"]["trust_remote_code"]),
            chat_template=params["model"]["chat_template"],
        )
        tuned = evaluate_model(model, tokenizer, rows, params, ctx, desc="eval: tuned")
    base_samples = base_report.get("samples") or []
    for sample, base_sample in zip(tuned["samples"], base_samples, strict=False):
        if base_sample.get("prompt") == sample["prompt"]:
            sample["base_prediction"] = base_sample.get("prediction")
    gates, passed = check_gates(params["gates"], _view(tuned), _view(base_report),
                                {"base": base_report["stats"], "tuned": tuned["stats"]},
                                float(params["confidence"]))
    _log_gates(gates, ctx)
    report = {
        "base": base_report["metrics"],
        "tuned": tuned["metrics"],
        "gates": gates,
        "passed": passed,
        "gate_choice": _choice(params, gates, tuned["metrics"]["counts"]),
        "metrics_by_kind": _by_kind(base_report, tuned),
        "worst_examples": _worst(tuned, base_report),
        "deltas": deltas(tuned["metrics"], base_report["metrics"]),
        "n": tuned["n"],
        "artifact": artifact,
        **({"models": {"base": base_report.get("model"), "tuned": tuned["model"]}}
           if "api" in params else {}),
        "tuned_stage": tuned_stage,
        "samples": tuned["samples"],
        "answer_syntax": tuned["answer_syntax"],
        "seconds": round(time.perf_counter() - start, 3),
        "generation_seconds": tuned["seconds"],
        "oom_retries": [{"model": side, **r} for side, report in (("base", base_report),
                                                                    ("tuned", tuned))
                        for r in report.get("oom_retries") or []],
        # answers that began with reasoning (its tokens); the answer after it was scored
        "reasoning": {side: report.get("reasoning") for side, report in (
            ("base", base_report), ("tuned", tuned))},
    }
    write_json(Path(out_dir) / REPORT_NAME, report)
    return report
