"""The monitor stage's params and builder: the deployed model's baseline, probe set and alert
rules. Pure.

A plan without a deploy stage (deploy=none or local) gets no monitor stage: there is no endpoint
to watch. monitor=none (the default) adds nothing, so every other fingerprint stays as it was.
The stage always runs (it reads deploy's fresh smoke latencies). Its inputs are {"eval",
"deploy" (integration_config.json, smoke_test.json), "data" (test.jsonl), "export" (merged/
tokenizer: the call syntax)}; it writes baseline.json (the report), probes.jsonl and
alert_rules.yml. Figures and metric names: llmops/serving/alerts.py.
"""

from typing import Any

from typing_extensions import NotRequired, TypedDict

from llmops.compiler.inputs import PlanBuilder, StageInputs


class MonitorThresholds(TypedDict):
    """monitor.thresholds.*: alert thresholds relative to the baseline."""

    accuracy_drop: float
    json_validity_drop: float
    refusal_rate_drop: float
    latency_factor: float
    latency_min_s: float


class MonitorWindows(TypedDict):
    """monitor.for.*: the Prometheus `for:` window of each alert (e.g. 15m)."""

    accuracy: str
    json_validity: str
    refusal_rate: str
    latency: str


class MonitorLimits(TypedDict):
    """limits.*: the bounds of `python -m llmops.monitor` on --log lines and on each probe request
    (its flags override them)."""

    row_bytes: int
    json_depth: int
    http_total_seconds: float


class MonitorAlerting(TypedDict):
    """monitor.alert_channels and monitor.alertmanager.*: alertmanager.yml's receivers."""

    channels: list[str]
    alertmanager: dict[str, Any]


# Functional form: "for" is a Python keyword.
MonitorParams = TypedDict("MonitorParams", {
    "probes": int,
    "seed": int,
    "significance": float,
    "thresholds": MonitorThresholds,
    "for": MonitorWindows,
    "metrics_host": str,
    "metrics_port": int,
    "allow_public_bind": bool,
    "request_timeout_s": float,
    "max_tokens": int,
    "limits": MonitorLimits,
    "allow_failed_gates": bool,
    # Only with monitor.alert_channels (so a plan without channels keeps its fingerprint).
    "alerting": NotRequired["MonitorAlerting"],
})
MonitorParams.__doc__ = """Params of the monitor stage (monitor enabled, after deploy and eval):
probes (held-out test rows in the probe set), seed (the run's), significance (one-sided level of
the live-vs-baseline tests), thresholds, for (alert windows), metrics_host / metrics_port /
allow_public_bind (the monitor's metrics endpoint), request_timeout_s (one probe request),
max_tokens (eval.max_new_tokens), limits, allow_failed_gates (deploy.allow_failed_gates)."""


def add_monitor(b: PlanBuilder, s: StageInputs) -> None:
    """Adds the monitor stage: baseline.json, probes.jsonl and alert_rules.yml."""
    m = s.cfg.monitor
    if not m.enabled or not b.has("deploy") or not b.has("eval"):
        return
    limits: MonitorLimits = {"row_bytes": s.cfg.limits.row_bytes,
                             "json_depth": s.cfg.limits.json_depth,
                             "http_total_seconds": s.cfg.limits.http_total_seconds}
    params: MonitorParams = {
        "probes": m.probes, "seed": s.cfg.seed, "significance": m.significance,
        "thresholds": MonitorThresholds(**m.thresholds.model_dump()),
        "for": MonitorWindows(**m.windows.model_dump()),
        "metrics_host": m.metrics_host, "metrics_port": m.metrics_port,
        "allow_public_bind": m.allow_public_bind,
        "request_timeout_s": m.request_timeout_s, "max_tokens": s.cfg.eval.max_new_tokens,
        "limits": limits,
        "allow_failed_gates": s.cfg.deploy.allow_failed_gates,
    }
    if m.alert_channels:
        params["alerting"] = {"channels": list(dict.fromkeys(m.alert_channels)),
                              "alertmanager": m.alertmanager.model_dump()}
    b.add("monitor", params, ["eval", "deploy", "data", *(["export"] if b.has("export") else [])],
          f"baseline from eval + deploy latency, {m.probes} held-out probes, Prometheus alert "
          f"rules (significance {m.significance:g})")
