"""The go/no-go assessment of a use case: five criteria, red flags, method, ROI and break-even.

Pure: arithmetic and regular expressions only. ``llmops/stages/decide.py`` wraps ``assess``.
"""

from __future__ import annotations

import re
from typing import Any

from llmops.planning.fixes import Catalog, option
from llmops.planning.memory import estimate
from llmops.planning.openai_ft import api_vs_self_host, way

MIN_EXAMPLES = 500
MIN_STABILITY_MONTHS = 6
MIN_HOURS = 40  # about one person-week for data, training, evaluation and hand-over
FULL_FT_MIN_EXAMPLES = 10_000
SAFETY_CRITICAL = ("medical", "health", "clinical", "pharma", "legal", "law", "finance",
                   "financial", "banking", "insurance")

# (pattern, flag, blocking, suggestion)
RED_FLAGS = (
    (r"know(s)? everything about|all (the )?knowledge|answer any question about|"
     r"(our|the) (docs|documentation|knowledge base|wiki)\b",
     "knowledge", True, "Knowledge that must be looked up belongs in retrieval (RAG), not in "
                        "weights: fine-tuning teaches behaviour and format, not facts."),
    (r"up[- ]to[- ]date|latest (information|data|prices)|real[- ]time|current (prices|stock)",
     "fresh_data", True,
     "Data that changes needs retrieval or tool calls (RAG/tools) at query time."),
    (r"requirements? (change|shift)|change(s)? (frequently|often|weekly|every)|"
     r"constantly (changing|evolving)|not (yet )?(defined|decided)",
     "unstable", True, "Unstable requirements make a fine-tune stale: keep iterating with "
                       "prompting until the task is stable for 6+ months."),
    (r"100 ?% (accura|correct|reliab)|never (make|makes) (a )?mistakes?|zero errors|"
     r"always (be )?(correct|right)|perfect accuracy",
     "perfection", True, "No model is 100% accurate: set a measurable target error rate and a "
                         "human-review path for the rest."),
)


def red_flags(description: str) -> list[dict[str, Any]]:
    """Finds red-flag phrases in a use-case description, each with what to do instead."""
    out = []
    for pattern, flag, blocking, suggestion in RED_FLAGS:
        m = re.search(pattern, description or "", flags=re.IGNORECASE)
        if m:
            out.append({"flag": flag, "phrase": m.group(0), "blocking": blocking,
                        "suggestion": suggestion})
    return out


def _crit(ok: bool, value: Any, threshold: Any, reason: str) -> dict[str, Any]:
    return {"verdict": "pass" if ok else "fail", "value": value, "threshold": threshold,
            "reason": reason}


def criteria(u: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Evaluates the five go/no-go criteria, each with verdict and reason."""
    err, target = float(u["prompting_error_rate"]), float(u["target_error_rate"])
    n, months = int(u["examples_available"]), float(u["stability_months"])
    hours, measurable = float(u["hours_available"]), bool(u["measurable"])
    return {
        "capability_gap": _crit(
            err > target, err, target,
            f"prompting errs on {err:.0%} of cases vs the {target:.0%} needed: a gap to close"
            if err > target else
            f"prompting already reaches {err:.0%} (target {target:.0%}): improve the prompt, "
            "not the weights"),
        "data_availability": _crit(
            n >= MIN_EXAMPLES, n, MIN_EXAMPLES,
            f"{n} labelled examples (>= {MIN_EXAMPLES} needed)" if n >= MIN_EXAMPLES else
            f"only {n} labelled examples; collect at least {MIN_EXAMPLES} first"),
        "stability": _crit(
            months >= MIN_STABILITY_MONTHS, months, MIN_STABILITY_MONTHS,
            f"requirements stable for ~{months:g} months (>= {MIN_STABILITY_MONTHS})"
            if months >= MIN_STABILITY_MONTHS else
            f"requirements stable for only ~{months:g} months; a fine-tune would go stale"),
        "measurability": _crit(
            measurable, measurable, True,
            "success has an automatic metric / test set" if measurable else
            "no automatic metric: define a test set and a pass threshold before training"),
        "resource_commitment": _crit(
            hours >= MIN_HOURS, hours, MIN_HOURS,
            f"{hours:g} team hours committed (>= {MIN_HOURS})" if hours >= MIN_HOURS else
            f"only {hours:g} team hours; data, evaluation and upkeep need >= {MIN_HOURS}"),
    }


def roi(u: dict[str, Any]) -> dict[str, Any]:
    """Monthly savings vs costs, payback period, and the API-vs-self-host break-even volume."""
    savings = (float(u["hours_per_task"]) * float(u["automation_rate"])
               * float(u["hourly_rate_usd"]) * int(u["tasks_per_month"]))
    costs = (float(u["infra_cost_monthly_usd"])
             + float(u["maintenance_cost_monthly_usd"]))
    invest = float(u["investment_usd"])
    net = savings - costs
    assessed = savings > 0 or costs > 0 or invest > 0
    payback = round(invest / net, 2) if net > 0 else None
    out: dict[str, Any] = {
        "assessed": assessed,
        "monthly_savings_usd": round(savings, 2), "monthly_costs_usd": round(costs, 2),
        "net_monthly_usd": round(net, 2), "investment_usd": invest,
        "payback_months": payback,
        "roi_12_months": round((12 * net - invest) / invest, 2) if invest > 0 else None,
        "positive": net > 0,
    }
    price = float(u["api_cost_per_1k_queries_usd"])
    q = int(u["monthly_queries"])
    if price > 0:
        be = costs / price * 1000
        be_amortized = (costs + invest / 12) / price * 1000
        api_monthly = q / 1000 * price
        cheaper = "self-host" if q > be else "api"
        out["break_even"] = {
            "api_monthly_usd": round(api_monthly, 2), "self_host_monthly_usd": round(costs, 2),
            "break_even_queries_per_month": round(be),
            "break_even_with_investment_12m": round(be_amortized),
            "monthly_queries": q, "cheaper": cheaper,
            "reason": f"{q:,} queries/month cost ${api_monthly:,.0f} on the API vs "
                      f"${costs:,.0f} self-hosted; self-hosting pays from {be:,.0f} queries/month",
        }
    return out


def _method(u: dict[str, Any], compute: dict[str, Any] | None,
            catalog: Catalog | None, api: dict[str, Any] | None = None) -> dict[str, Any]:
    domain = str(u["domain"]).lower()
    critical = any(k in domain for k in SAFETY_CRITICAL)
    if critical:
        training, why = "SFT+DPO", [f"'{domain}' is safety-critical: SFT for the format, then DPO "
                                    "on expert-ranked pairs to push away harmful answers"]
    elif u["refinement"]:
        training, why = "DPO", ["the model already does the task: DPO refines preferences"]
    else:
        training, why = "SFT", ["teaching a behaviour/format from examples: supervised fine-tuning"]
    out: dict[str, Any] = {"training": training, "adapter": None, "why": why, "options": {},
                           "way": way(int(u["examples_available"]))}
    if out["way"]["backend"] == "openai":
        out["why"].append(out["way"]["why"])
    if not compute or not compute.get("model") or not compute.get("hardware"):
        out["why"].append("no model/hardware given: adapter choice skipped")
        return out
    model, hw = compute["model"], compute["hardware"]
    # Judge by the leanest step (batch 1, checkpointing): batch size is tuned afterwards.
    train = {**(compute.get("train") or {}), "batch_size": 1, "grad_accum": 1,
             "gradient_checkpointing": True}
    # The options the advice names (lora=r16, quant=nf4) are those of their option files.
    if catalog is None:
        raise ValueError("assess: a compute plan needs the catalog of option files")
    r16, none = option(catalog, "lora", "r16"), option(catalog, "quant", "none")
    nf4 = option(catalog, "quant", "nf4")
    options = {
        "full": estimate(model, None, none, train, hw),
        "LoRA": estimate(model, r16, none, train, hw),
        "QLoRA": estimate(model, r16, nf4, train, hw),
    }
    out["options"] = {k: {"total_gb": v["total_gb"], "fits": v["fits"]} for k, v in options.items()}
    if api is not None and api.get("cost_usd") is not None:  # train.backend=openai
        lora = estimate(model, r16, none, compute.get("train") or {}, hw,
                        n_train_rows=api.get("train_rows"))
        out["api_vs_self_host"] = api_vs_self_host(float(api["cost_usd"]), lora.get("cost_usd"))
        out["why"].append(out["api_vs_self_host"])
    big_data = int(u["examples_available"]) >= FULL_FT_MIN_EXAMPLES
    where = f"{hw.get('name')} ({hw.get('gpu_memory_gb') or hw.get('memory_gb')} GB)"
    if options["full"]["fits"] and big_data:
        out["adapter"] = "full"
        out["why"].append(f"full fine-tune fits {where} and >= {FULL_FT_MIN_EXAMPLES} examples")
    elif options["LoRA"]["fits"]:
        out["adapter"] = "LoRA"
        out["why"].append(f"16-bit LoRA fits {where} (~{options['LoRA']['total_gb']:.1f} GB)")
    elif options["QLoRA"]["fits"]:
        out["adapter"] = "QLoRA"
        out["why"].append(f"only 4-bit QLoRA fits {where} (~{options['QLoRA']['total_gb']:.1f} GB "
                          f"vs LoRA ~{options['LoRA']['total_gb']:.1f} GB)")
    else:
        out["why"].append(f"even QLoRA needs ~{options['QLoRA']['total_gb']:.1f} GB on {where}: "
                          "use a smaller model or a larger GPU")
    return out


def _rigor(u: dict[str, Any], method: dict[str, Any]) -> dict[str, Any]:
    domain = str(u["domain"]).lower()
    reasons = []
    if any(k in domain for k in SAFETY_CRITICAL):
        reasons.append(f"safety-critical domain '{domain}'")
    if float(u["target_error_rate"]) <= 0.01:
        reasons.append("target error rate <= 1%")
    if not reasons:
        return {"flagged": False, "reasons": [], "requirements": []}
    return {"flagged": True, "reasons": reasons, "requirements": [
        "a held-out test set labelled or reviewed by domain experts (not sampled from training)",
        "safety gates: refusal on out-of-scope or harmful requests, no-regression vs the base",
        "human review of a sample of outputs before deploy, and monitoring after",
    ]}


def assess(usecase: dict[str, Any], compute: dict[str, Any] | None = None, *,
           catalog: Catalog | None = None, api: dict[str, Any] | None = None) -> dict[str, Any]:
    """Decides whether to fine-tune: criteria, red flags, method, ROI, break-even and go/no-go.

    Args:
        usecase: The usecase params (see ``llmops.config.usecase.UsecaseConfig``).
        compute: Optional {"model", "hardware", "train"} to pick QLoRA / LoRA / full by memory.
        catalog: The option files (``llmops.planning.fixes.Catalog``); needed with compute.
        api: train.backend=openai's upload estimate ({"cost_usd", "train_rows", ...}): the API
            job's cost is weighed against self-hosted LoRA's (``method.api_vs_self_host``).

    Returns:
        The decision report (decision_report.json).
    """
    crit = criteria(usecase)
    flags = red_flags(usecase["description"])
    if usecase["task_type"] == "knowledge" and not any(f["flag"] == "knowledge" for f in flags):
        flags.append({"flag": "knowledge", "phrase": "task_type=knowledge", "blocking": True,
                      "suggestion": RED_FLAGS[0][3]})
    money = roi(usecase)
    method = _method(usecase, compute, catalog, api)
    reasons = [f"{k}: {c['reason']}" for k, c in crit.items() if c["verdict"] == "fail"]
    reasons += [f"red flag '{f['phrase']}': {f['suggestion']}" for f in flags if f["blocking"]]
    if money["assessed"] and not money["positive"]:
        reasons.append(f"roi: savings ${money['monthly_savings_usd']:,.0f}/month do not cover "
                       f"costs ${money['monthly_costs_usd']:,.0f}/month")
    if compute and method["adapter"] is None and method["options"]:
        reasons.append(f"compute: {method['why'][-1]}")
    go = not reasons
    alternatives = []
    if any(f["flag"] in ("knowledge", "fresh_data") for f in flags):
        alternatives.append(
            "RAG: retrieve the facts at query time; fine-tune later only for format")
    if crit["capability_gap"]["verdict"] == "fail" or crit["stability"]["verdict"] == "fail":
        alternatives.append("prompt engineering / few-shot prompting")
    return {
        "usecase": usecase["name"],
        "domain": usecase["domain"],
        "go": go,
        "verdict": "go" if go else "no-go",
        "reasons": reasons or ["all five criteria pass, no blocking red flag, ROI not negative"],
        "criteria": crit,
        "red_flags": flags,
        "method": method,
        "evaluation_rigor": _rigor(usecase, method),
        "roi": money,
        "alternatives": alternatives,
        "enforce": bool(usecase["enforce"]),
    }


def no_go_message(report: dict[str, Any], report_path: str) -> str:
    """Renders a no-go for the user: the reasons, the alternatives, the report and the override."""
    lines = [f"The decide stage says NO-GO for '{report.get('usecase')}', so nothing was trained:"]
    lines += [f"  - {r}" for r in report.get("reasons", [])]
    if report.get("alternatives"):
        lines.append("Consider instead: " + "; ".join(report["alternatives"]) + ".")
    lines.append(f"Report: {report_path}. To train anyway: usecase.enforce=false.")
    return "\n".join(lines)
