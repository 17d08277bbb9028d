"""Scores live answers with eval's scorers and compares each figure with the baseline.

Answers are read with the deployed model's own call syntax (``baseline.json`` ``call_syntax``);
structured ``tool_calls`` (an OpenAI-compatible server with a function-calling handler, or a
logged response) are written into that syntax first, so both reach the same parser. A figure's
drop is judged by a one-sided two-proportion z-test (statsmodels) of the live rate against the
baseline's: a small probe whose rate happens to dip does not page anyone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llmops.serving.alerts import BY_NAME, FIGURES


def parser(syntax: str | None):
    """Returns the parser of the model's call syntax (Hermes when the template names none)."""
    from llmops.scoring.parsers import get_parser

    return get_parser(syntax or "hermes")


def live_samples(rows: Sequence[Mapping[str, Any]], answers: Sequence[str],
                 syntax: str | None, extra_json_valid: Sequence[bool] = ()) -> dict[str, Any]:
    """Scores answers to probe rows with eval's ``score_split``; returns {figure: (rate, n)}.

    Args:
        rows: The probe rows answered (reference answer last).
        answers: One answer per row, in the model's syntax.
        syntax: The model's call syntax.
        extra_json_valid: JSON validity of calls without a reference (logged traffic that matches
            no probe): they count towards json_validity only.
    """
    from llmops.scoring.split import score_split

    samples = score_split(rows, answers, parser(syntax))["samples"] if rows else {}
    out: dict[str, Any] = {}
    for f in FIGURES:
        s = samples.get(f.metric)
        hits, n = (round(s["value"] * s["n"]), int(s["n"])) if s else (0, 0)
        if f.name == "json_validity":
            hits, n = hits + sum(map(bool, extra_json_valid)), n + len(extra_json_valid)
        out[f.name] = (hits / n if n else None, n)
    return out


def drop_p_value(now: float, n_now: int, base: float, n_base: int) -> float:
    """Returns the one-sided p-value that the live rate is below the baseline rate.

    A two-proportion z-test (``statsmodels.stats.proportion.proportions_ztest``, alternative
    "smaller"); 1.0 when both rates are 0 or both 1 (no spread: no evidence of a drop).
    """
    from statsmodels.stats.proportion import proportions_ztest

    x_now, x_base = round(now * n_now), round(base * n_base)
    pooled = (x_now + x_base) / (n_now + n_base)
    if pooled in (0.0, 1.0):
        return 1.0
    _, p = proportions_ztest([x_now, x_base], [n_now, n_base], alternative="smaller")
    return float(p)


def compare(baseline: Mapping[str, Any], live: Mapping[str, Any],
            latencies: Sequence[float]) -> dict[str, Any]:
    """Compares live figures and latency with the baseline.

    Returns:
        {"figures": {name: {metric, baseline, baseline_n, now, n, delta, threshold, p_value,
        significant, alert, firing}}, "latency": {...}, "alerts_firing": [alert names]}.
    """
    from llmops.serving.alerts import LATENCY_ALERT, alert_name, latency_percentiles

    alpha = float(baseline["significance"])
    out: dict[str, Any] = {}
    for name, fig in baseline["figures"].items():
        now, n = live.get(name, (None, 0))
        entry = {"metric": BY_NAME[name].metric, "baseline": fig["value"], "baseline_n": fig["n"],
                 "now": now, "n": n, "threshold": fig["threshold"], "alert": alert_name(name)}
        if now is None:
            entry.update(delta=None, p_value=None, significant=False, firing=False,
                         note="no probe of this kind was answered")
        else:
            p = drop_p_value(now, n, fig["value"], fig["n"])
            entry.update(delta=round(now - fig["value"], 6), p_value=round(p, 6),
                         significant=p < alpha, firing=now < fig["threshold"] and p < alpha)
        out[name] = entry
    lat = baseline["latency"]
    now_lat = latency_percentiles(list(latencies))
    latency = {"baseline_p95_s": lat["p95_s"], "threshold_s": lat["threshold_s"], **now_lat,
               "alert": LATENCY_ALERT,
               "firing": now_lat["p95_s"] is not None and now_lat["p95_s"] > lat["threshold_s"]}
    firing = [e["alert"] for e in out.values() if e["firing"]]
    if latency["firing"]:
        firing.append(LATENCY_ALERT)
    return {"figures": out, "latency": latency, "alerts_firing": firing}
