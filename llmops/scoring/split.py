"""Scores a test split by what each row holds: tool calls, refusals, free text.

A row's kind comes from the row, never from a dataset name (``row_kind``): its last assistant
turn has ``tool_calls`` (or a call in the model's syntax) -> "tool"; ``meta.kind == "refusal"``
(or ``meta.refuse``, or the bundled refusal text) -> "refusal"; anything else -> "text". Tool and
refusal rows go through the structural tool-call scorer (``llmops.scoring.tools``), text rows
through ROUGE-L and chrF (``llmops.scoring.text``); held-out loss comes from the eval stage.

Metric names (``llmops.scoring.metric_names``): a plain name (``exact_match``) is measured over
every row the metric applies to; a ``KIND.METRIC`` name (``tool.exact_match``, ``text.rouge_l``)
over that kind's rows only. Pure Python, no torch.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from llmops.scoring.metric_names import KIND_METRICS, KINDS, METRICS
from llmops.scoring.parsers import ParsedAnswer, split_reasoning
from llmops.scoring.tolerance import Sample, mean_sample, rate_sample

Parser = Callable[[str], ParsedAnswer]


def _norm(text: str | None) -> str:
    return re.sub(r"\s+", " ", str(text or "")).strip().lower()


def reference_text(row: Mapping[str, Any]) -> str:
    """Returns the row's reference answer as text: its content, or its calls as JSON."""
    last = row["messages"][-1]
    if last.get("content"):
        return str(last["content"])
    calls = [c.get("function") or c for c in last.get("tool_calls") or []]
    return json.dumps(calls, ensure_ascii=False)


def _text_scores(rows: Sequence[Mapping[str, Any]], answers: Sequence[str]) -> list[dict]:
    from llmops.scoring.text import chrf_scores, rouge_l_scores

    refs = [reference_text(r) for r in rows]
    rouge, chrf = rouge_l_scores(answers, refs), chrf_scores(answers, refs)
    return [{"kind": "text", "exact": _norm(a) == _norm(r), "rouge_l": rl, "chrf": cf}
            for a, r, rl, cf in zip(answers, refs, rouge, chrf, strict=True)]


def _text_metrics(scores: Sequence[Mapping[str, Any]], answers: Sequence[str],
                  refs: Sequence[str]) -> dict[str, Any]:
    from llmops.scoring.text import chrf

    rouge = [s["rouge_l"] for s in scores]
    return {"rouge_l": sum(rouge) / len(rouge) if rouge else None,
            "chrf": chrf(answers, refs),
            "exact_match": sum(s["exact"] for s in scores) / len(scores) if scores else None}


def score_split(rows: Sequence[Mapping[str, Any]], answers: Sequence[str],
                parse: Parser) -> dict[str, Any]:
    """Scores every row by its kind.

    Args:
        rows: The test rows (OpenAI chat form; the last message is the reference).
        answers: One decoded answer per row.
        parse: Reads calls out of an answer in the model's own syntax.

    Returns:
        {"metrics": whole-split metrics, "by_kind": {kind: {"count", metrics...}},
        "per_row": one score dict per row (kind, exact, and the kind's own scores),
        "samples": {gate metric name: Sample dict} (see ``tolerance.Sample``),
        "reasoning": {"rows", "chars"}: answers that began with reasoning
        (``parsers.split_reasoning``), which is left out: the answer after it is scored}.

    Raises:
        ValueError: If rows and answers differ in length.
    """
    from llmops.scoring.tools import aggregate, row_kind, score_tool_rows

    if len(rows) != len(answers):
        raise ValueError(f"got {len(rows)} rows but {len(answers)} answers. Pass one answer per "
                         "row.")
    reasoning = [split_reasoning(a) for a in answers]
    answers = [answer for _, answer in reasoning]  # the answer after the reasoning is scored
    kinds = [row_kind(r, parse=parse) for r in rows]
    idx = {k: [i for i, kind in enumerate(kinds) if kind == k] for k in KINDS}
    per_row: list[dict[str, Any]] = [{} for _ in rows]
    calls = idx["tool"] + idx["refusal"]
    metrics, scores = score_tool_rows([rows[i] for i in calls], [answers[i] for i in calls],
                                      parse)
    for i, s in zip(calls, scores, strict=True):
        per_row[i] = {**s, "kind": kinds[i]}
    by_kind: dict[str, dict[str, Any]] = {}
    for kind in ("tool", "refusal"):
        agg = aggregate([s for i, s in zip(calls, scores, strict=True) if kinds[i] == kind])
        by_kind[kind] = {"count": len(idx[kind]), **{m: agg.get(m) for m in KIND_METRICS[kind]
                                                if m in agg}}
    texts = idx["text"]
    text_answers, refs = [answers[i] for i in texts], [reference_text(rows[i]) for i in texts]
    for i, s in zip(texts, _text_scores([rows[i] for i in texts], text_answers), strict=True):
        per_row[i] = s
    text = _text_metrics([per_row[i] for i in texts], text_answers, refs)
    by_kind["text"] = {"count": len(texts), **text}
    metrics.pop("counts", None)
    metrics.update(rouge_l=text["rouge_l"], chrf=text["chrf"],
                   exact_match=_mean([float(s["exact"]) for s in per_row]),
                   counts={"total": len(rows), **{k: len(idx[k]) for k in KINDS}})
    return {"metrics": metrics, "by_kind": by_kind, "per_row": per_row,
            "samples": _samples(per_row),
            "reasoning": {"rows": sum(r is not None for r, _ in reasoning),
                          "chars": sum(len(r or "") for r, _ in reasoning)}}


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _samples(per_row: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Returns the Sample of each gateable rate or mean score, by metric name."""
    def flags(kind: str | None, key: str) -> list[bool]:
        return [bool(s[key]) for s in per_row
                if (kind is None or s.get("kind") == kind) and s.get(key) is not None]

    out: dict[str, Sample | None] = {
        "exact_match": rate_sample(flags(None, "exact")),
        "json_valid_rate": rate_sample(flags("tool", "json_valid")),
        "schema_valid_rate": rate_sample(flags("tool", "schema_valid")),
        "refusal_rate": rate_sample(flags("refusal", "refused")),
        "false_refusal_rate": rate_sample(flags("tool", "refused")),
        "rouge_l": mean_sample([s["rouge_l"] for s in per_row if s.get("kind") == "text"]),
        "chrf": mean_sample([s["chrf"] for s in per_row if s.get("kind") == "text"]),
    }
    for kind in KINDS:
        out[f"{kind}.exact_match"] = rate_sample(flags(kind, "exact"))
    for name in ("json_valid_rate", "schema_valid_rate", "false_refusal_rate"):
        out[f"tool.{name}"] = out[name]
    out["refusal.refusal_rate"] = out["refusal_rate"]
    out["text.rouge_l"], out["text.chrf"] = out["rouge_l"], out["chrf"]
    return {k: s.to_dict() for k, s in out.items() if s is not None}


MAX_LOSS = 100.0
"""Nats per token a row's loss is capped at: diverged weights (inf, nan) count as this bad, so a
destroyed model fails its perplexity gate and every report number stays finite."""


def _capped(nll: float, tokens: int) -> float:
    return nll if math.isfinite(nll) and nll <= MAX_LOSS * tokens else MAX_LOSS * tokens


def add_losses(scored: dict[str, Any], losses: Sequence[tuple[float, int] | None]) -> None:
    """Adds held-out loss and perplexity (whole split and by kind) to a ``score_split`` result.

    Args:
        scored: What ``score_split`` returned; updated in place.
        losses: Per row, (summed token negative log-likelihood, answer tokens), or None for a
            row that could not be measured.
    """
    per_row = scored["per_row"]
    losses = [None if not x or not x[1] else (_capped(x[0], x[1]), x[1]) for x in losses]
    for s, loss in zip(per_row, losses, strict=True):
        s["loss"] = None if loss is None else loss[0] / loss[1]

    def measure(rows: list[int]) -> tuple[float | None, float | None, Sample | None]:
        nll = sum(losses[i][0] for i in rows if losses[i])  # type: ignore[index]
        tokens = sum(losses[i][1] for i in rows if losses[i])  # type: ignore[index]
        if not tokens:
            return None, None, None
        loss = nll / tokens
        sample = mean_sample([per_row[i]["loss"] for i in rows if per_row[i]["loss"] is not None])
        return loss, math.exp(loss), sample

    everything = list(range(len(per_row)))
    loss, ppl, sample = measure(everything)
    scored["metrics"].update(loss=loss, perplexity=ppl)
    if sample is not None:
        scored["samples"]["loss"] = sample.to_dict()
    for kind in KINDS:
        rows = [i for i in everything if per_row[i].get("kind") == kind]
        loss, ppl, sample = measure(rows)
        scored["by_kind"][kind].update(loss=loss, perplexity=ppl)
        if sample is not None:
            scored["samples"][f"{kind}.loss"] = sample.to_dict()


def lookup(metrics: Mapping[str, Any], by_kind: Mapping[str, Any], name: str) -> Any:
    """Returns a metric by gate name: plain from the whole split, KIND.METRIC from that kind."""
    if "." in name:
        kind, metric = name.split(".", 1)
        return (by_kind.get(kind) or {}).get(metric)
    return metrics.get(name)


def deltas(tuned: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, float | None]:
    """Returns tuned - base for every whole-split metric (None where either is unmeasured)."""
    from llmops.scoring.metrics import metric_deltas

    return metric_deltas(tuned, base, METRICS)
