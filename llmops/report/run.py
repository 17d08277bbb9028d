"""A run's report: reads the run folder (manifest.json, plan.json, each stage's JSON report and
the files the deploy stage leaves in its folder) into the template's context and charts.

A report that is missing (its stage did not run) or cannot be read leaves its section saying so;
nothing here raises on the shape of a report: the page is what a user opens when a run went wrong.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from llmops.core.plan import report_name
from llmops.report import charts
from llmops.report.graph import layout
from llmops.tracking.leaderboard import Unreadable, default_json_depth, read_object

#: At most this many rows of a list (rejects, examples, files) and characters of a text.
MAX_ROWS = 50
MAX_TEXT = 4000
STOPPED = ("failed", "interrupted", "gate_failed", "no_go")
#: Stage kinds whose report a section of the page shows, in page order.
TRAINING_KINDS = ("sft", "dpo", "kto", "orpo", "simpo", "grpo")
SECTIONS = ("decide", "compute", "data", "training", "eval", "parity", "deploy", "monitor",
            "release")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def clip(value: Any, limit: int = MAX_TEXT) -> str:
    """Returns value as text of at most `limit` characters (marked where cut)."""
    text = value if isinstance(value, str) else "" if value is None else str(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit} more chars)"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


class RunFolder:
    """Reads a run folder's JSON files, each once, bounded like compare reads them."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)
        self.depth = default_json_depth()
        self.problems: list[str] = []

    def read(self, name: str | Path) -> dict[str, Any]:
        """Returns a file's JSON object ({} when missing; unreadable ones are listed)."""
        try:
            return read_object(self.dir / name, self.depth)
        except Unreadable as exc:
            self.problems.append(str(exc))
            return {}


def _stages(folder: RunFolder, plan: dict[str, Any], manifest: dict[str, Any]) -> list[dict]:
    recorded = _dict(manifest.get("stages"))
    specs = _list(plan.get("stages")) or [{"name": n, **_dict(s)} for n, s in recorded.items()]
    out = []
    for spec in specs:
        spec = _dict(spec)
        name = str(spec.get("name", "?"))
        rec = _dict(recorded.get(name))
        status = str(rec.get("status") or ("not started" if manifest else "unknown"))
        out.append({
            "name": name, "kind": str(spec.get("kind", rec.get("kind", ""))),
            "needs": [str(n) for n in _list(spec.get("needs") or rec.get("needs"))],
            "summary": clip(spec.get("summary"), 300), "status": status,
            "cached": status == "cached", "duration_s": _number(rec.get("duration_s")),
            "fingerprint": str(rec.get("fingerprint") or spec.get("fingerprint") or "")[:12],
            "peak_rss_gb": _number(rec.get("peak_rss_gb")),
            "note": clip(rec.get("error") or rec.get("reason") or rec.get("rebuilt")
                         or (f"resumed from step {rec['resumed_from_step']}"
                             if rec.get("resumed_from_step") else ""), 2000),
        })
    return out


def _problem(manifest: dict[str, Any], stages: list[dict], reports: dict[str, dict]) -> dict:
    """What stopped the run, shown first: the failing stage and its error (or failed gates)."""
    status = manifest.get("status")
    if status not in STOPPED:
        return {}
    name = manifest.get("failed_stage") or next(
        (s["name"] for s in stages if s["status"] in ("failed", "interrupted")), None)
    stage = next((s for s in stages if s["name"] == name), None)
    error = (stage or {}).get("note") or clip(manifest.get("error"))
    failed_gates = []
    if status == "gate_failed":
        evals = reports.get("eval", {})
        failed_gates = [g for g in _list(evals.get("gates")) if isinstance(g, dict)
                        and g.get("passed") is False and not g.get("skipped")]
        name = name or next((s["name"] for s in stages if s["kind"] == "eval"), None)
        error = error or "the evaluation gates below failed, so the stages after eval did not run"
    if status == "no_go":
        name = name or "decide"
        error = error or "; ".join(map(str, _list(reports.get("decide", {}).get("reasons"))))
    return {"status": status, "stage": name, "error": error, "failed_gates": failed_gates}


def _compute(report: dict[str, Any], chart: dict[str, Any]) -> None:
    parts = {k: v for k, v in _dict(report.get("parts_gb")).items() if _number(v) is not None}
    if parts:
        chart["memory_parts"] = charts.bars(list(parts), {"GB": list(parts.values())},
                                            "part", "GB (one device)")
    stages = {k: _dict(v) for k, v in _dict(report.get("stages")).items()}
    if stages:
        names = list(stages)
        part_names: list[str] = []
        for s in stages.values():
            part_names += [p for p in _dict(s.get("parts_gb")) if p not in part_names]
        chart["memory_stages"] = charts.bars(
            names, {p: [_number(_dict(stages[n].get("parts_gb")).get(p)) or 0 for n in names]
                    for p in part_names}, "stage", "GB", stacked=True)


def _curves(curve: list[dict[str, Any]], fields: list[str]) -> dict[str, list]:
    series = {}
    for field in fields:
        pts = [(p["step"], p[field]) for p in curve
               if _number(p.get("step")) is not None and _number(p.get(field)) is not None]
        if pts:
            series[field] = pts
    return series


def _training(report: dict[str, Any], chart: dict[str, Any], key: str) -> list[str]:
    """Adds the loss curve (and DPO's reward curves, GRPO's per reward) of a training report;
    returns the names of the charts it added."""
    curve = [p for p in _list(report.get("loss_curve")) if isinstance(p, dict)]
    added = []
    losses = _curves(curve, ["loss", "eval_loss"])
    if losses:
        chart[key] = charts.lines(losses, "step", "loss")
        added.append(key)
    others = sorted({f for p in curve for f in p if f.startswith(("reward", "kl"))})
    rewards = _curves(curve, others)
    if rewards:
        chart[f"{key}_rewards"] = charts.lines(rewards, "step", "value")
        added.append(f"{key}_rewards")
    return added


def _eval(report: dict[str, Any], chart: dict[str, Any]) -> dict[str, Any]:
    kinds = {k: _dict(v) for k, v in _dict(report.get("metrics_by_kind")).items()
             if _dict(v).get("count")}
    labels, base, tuned = [], [], []
    for kind, m in kinds.items():
        for metric, value in _dict(m.get("tuned")).items():
            if metric in ("loss", "perplexity") or _number(value) is None:
                continue
            labels.append(f"{kind}.{metric}")
            tuned.append(_number(value))
            base.append(_number(_dict(m.get("base")).get(metric)))
    if labels:
        chart["eval_kinds"] = charts.bars(labels, {"base": base, "tuned": tuned},
                                          "metric", "rate")
    metrics = sorted({m for k in kinds.values() for part in ("base", "tuned")
                      for m in _dict(k.get(part))})
    worst = {name: [{key: clip(row.get(key)) for key in
                     ("row", "prompt", "reference", "base_prediction", "prediction", "score")}
                    for row in _list(rows)[:MAX_ROWS] if isinstance(row, dict)]
             for name, rows in _dict(report.get("worst_examples")).items()}
    return {"kinds": kinds, "metrics": metrics, "worst": worst,
            "gates": [g for g in _list(report.get("gates")) if isinstance(g, dict)]}


def _data(report: dict[str, Any], chart: dict[str, Any]) -> dict[str, Any]:
    dist = {k: _dict(v) for k, v in _dict(report.get("tool_distribution")).items() if k != "all"}
    if dist:
        labels = sorted({t for split in dist.values() for t in split})
        chart["data_kinds"] = charts.bars(
            labels, {split: [_number(v.get(t)) or 0 for t in labels] for split, v in dist.items()},
            "tool (or refusal)", "rows", stacked=True)
    rejects: dict[str, list[dict[str, str]]] = {}
    for r in _list(report.get("rejects")):
        if isinstance(r, dict) and len(rejects.setdefault(str(r.get("code")), [])) < MAX_ROWS:
            rejects[str(r.get("code"))].append({str(k): clip(v) for k, v in r.items()
                                                if k != "code"})
    return {"rejects": rejects, "by_code": _dict(report.get("rejects_by_code")),
            "duplicates": [{str(k): clip(v) for k, v in _dict(d).items()}
                           for d in _list(report.get("duplicate_rows"))[:MAX_ROWS]]}


def _smoke(folder: RunFolder, stages: list[dict]) -> list[dict[str, Any]]:
    deploy = next((s for s in stages if s["kind"] == "deploy"), None)
    if deploy is None:
        return []
    smoke = folder.read(Path("stages") / deploy["name"] / "smoke_test.json")
    out = []
    for r in _list(smoke.get("results"))[:MAX_ROWS]:
        r = _dict(r)
        user = next((m.get("content") for m in reversed(_list(r.get("messages")))
                     if isinstance(m, dict) and m.get("role") == "user"), "")
        out.append({"prompt": clip(user), "answer": clip(r.get("answer")),
                    "tool_calls": [clip(f"{_dict(c).get('name')}({_dict(c).get('arguments')})")
                                   for c in _list(r.get("tool_calls"))[:MAX_ROWS]],
                    "finish_reason": clip(r.get("finish_reason"), 40),
                    "seconds": _number(r.get("seconds"))})
    return out


def run_page(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Returns (template context, charts) of a run folder's report.

    Raises:
        FileNotFoundError: The folder holds neither manifest.json nor plan.json (not a run).
    """
    folder = RunFolder(run_dir)
    manifest, plan = folder.read("manifest.json"), folder.read("plan.json")
    if not manifest and not plan:
        raise FileNotFoundError(f"{run_dir} holds no manifest.json or plan.json: not a run "
                                "folder (give the folder a run printed, e.g. "
                                "outputs/runs/DATE/TIME)")
    stages = _stages(folder, plan, manifest)
    by_kind = {s["kind"]: s for s in stages}
    reports: dict[str, dict[str, Any]] = {}
    for s in stages:
        try:
            reports.setdefault(s["kind"], folder.read(report_name(s["kind"])))
        except KeyError:  # a stage kind this llmops does not know
            continue
    chart: dict[str, Any] = {}
    _compute(reports.get("compute", {}), chart)
    trainings = [{"kind": k, "report": reports[k], "charts": _training(reports[k], chart,
                                                                         f"loss_{k}")}
                 for k in TRAINING_KINDS if reports.get(k)]
    training_kind = trainings[0]["kind"] if trainings else None
    training = trainings[0]["report"] if trainings else {}
    if reports.get("base"):
        _training(reports["base"], chart, "pretrain_loss")
    config = _dict(plan.get("config") or manifest.get("config"))
    context = {
        "title": f"llmops run {Path(run_dir).name}",
        "run_dir": str(Path(run_dir).resolve()),
        "manifest": manifest, "status_value": manifest.get("status", "planned"),
        "problem": _problem(manifest, stages, reports),
        "graph": layout(stages), "stages": stages, "by_kind": by_kind,
        "reports": reports, "training_kind": training_kind, "training": training,
        "trainings": trainings,
        "eval": _eval(reports.get("eval", {}), chart),
        "data": _data(reports.get("data", {}), chart),
        "smoke": _smoke(folder, stages),
        "overrides": [clip(o, 500) for o in _list(manifest.get("overrides"))],
        "model": _dict(config.get("model")).get("name"),
        "sections": SECTIONS,
        "unreadable": folder.problems,
    }
    return context, chart
