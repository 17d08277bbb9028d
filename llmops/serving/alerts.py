"""The monitored figures of a served model, their Prometheus names, and the alert rules derived
from a baseline.

One table (``FIGURES``) names each figure's eval metric and its gauge, so the monitor stage's
alert_rules.yml and the metrics `python -m llmops.monitor` exports cannot drift apart. No torch,
no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Figure:
    """One monitored rate.

    Attributes:
        name: The figure's name in baseline.json, monitor_report.json and the alert rules.
        metric: The eval metric it is measured as (a KIND.METRIC gate name).
        gauge: The Prometheus gauge the monitor command exports it as.
        title: What it is, in words, for the alert's summary.
    """

    name: str
    metric: str
    gauge: str
    title: str


FIGURES: tuple[Figure, ...] = (
    Figure("accuracy", "tool.exact_match", "llmops_monitor_accuracy", "tool-call exact match"),
    Figure("json_validity", "tool.json_valid_rate", "llmops_monitor_json_validity",
           "JSON validity of tool calls"),
    Figure("refusal_rate", "refusal.refusal_rate", "llmops_monitor_refusal_rate",
           "refusal rate on out-of-scope requests"),
)
BY_NAME = {f.name: f for f in FIGURES}
SIGNIFICANT_DROP = "llmops_monitor_significant_drop"
"""Gauge {figure=NAME}: 1 while the live rate is significantly below the baseline, else 0."""
LATENCY = "llmops_monitor_request_latency_seconds"
"""Histogram of probe request latency."""
PROBES = "llmops_monitor_probes"
"""Counter of probes sent (exported as llmops_monitor_probes_total)."""
ERRORS = "llmops_monitor_request_errors"
"""Counter of probe requests that failed (llmops_monitor_request_errors_total)."""
FIRING = "llmops_monitor_alert_firing"
"""Gauge {alert=NAME}: 1 while the monitor command sees that alert's condition."""
LATENCY_QUANTILE = 0.95


def alert_name(figure: str) -> str:
    """Returns the alert's name of a figure, e.g. LlmopsAccuracyBelowBaseline."""
    return "Llmops" + "".join(p.title() for p in figure.split("_")) + "BelowBaseline"


LATENCY_ALERT = "LlmopsLatencyP95High"


def latency_percentiles(seconds: list[float]) -> dict[str, Any]:
    """Returns p50/p95/p99 (linear interpolation, numpy) of request latencies in seconds."""
    import numpy as np

    if not seconds:
        return {"n": 0, "p50_s": None, "p95_s": None, "p99_s": None}
    p50, p95, p99 = (round(float(v), 4) for v in np.percentile(seconds, [50, 95, 99]))
    return {"n": len(seconds), "p50_s": p50, "p95_s": p95, "p99_s": p99}


def rate_threshold(value: float, drop: float, gate: float | None) -> float:
    """Returns a rate's alert threshold: the baseline minus the allowed drop, never below the
    eval gate's threshold (None: no gate on that metric)."""
    return round(max(value - drop, gate if gate is not None else 0.0), 6)


def latency_threshold(p95: float | None, factor: float, floor: float) -> float:
    """Returns the p95 latency threshold in seconds: baseline p95 x factor, at least floor."""
    return round(max((p95 or 0.0) * factor, floor), 6)


def alert_rules(baseline: Mapping[str, Any]) -> dict[str, Any]:
    """Builds the Prometheus rule file (groups/rules) for a baseline.

    Args:
        baseline: baseline.json's content: ``figures`` {name: {value, n, threshold, for, ...}},
            ``latency`` {p95_s, threshold_s, for}, ``model``.

    Returns:
        The rule file as data: {"groups": [{"name", "rules": [{alert, expr, for, labels,
        annotations}]}]}.
    """
    model = str(baseline["model"])
    rules = []
    for name, fig in baseline["figures"].items():
        f = BY_NAME[name]
        rules.append({
            "alert": alert_name(name),
            "expr": (f"{f.gauge} < {fig['threshold']:g} and on(model) "
                     f'{SIGNIFICANT_DROP}{{figure="{name}"}} == 1'),
            "for": fig["for"],
            "labels": {"severity": "page", "model": model, "figure": name},
            "annotations": {
                "summary": f"{model}: {f.title} below its evaluated baseline",
                "description": (f"{f.metric} is {{{{ $value }}}}, below {fig['threshold']:g} "
                                f"(baseline {fig['value']:.4g} on {fig['n']} rows) and "
                                f"significantly lower than the baseline."),
            },
        })
    lat = baseline["latency"]
    rules.append({
        "alert": LATENCY_ALERT,
        "expr": (f"histogram_quantile({LATENCY_QUANTILE}, sum by (le) "
                 f"(rate({LATENCY}_bucket[5m]))) > {lat['threshold_s']:g}"),
        "for": lat["for"],
        "labels": {"severity": "ticket", "model": model, "figure": "latency"},
        "annotations": {
            "summary": f"{model}: p95 request latency above {lat['threshold_s']:g} s",
            "description": (f"p95 latency is {{{{ $value }}}} s; the deploy smoke test measured "
                            f"p95 {lat['p95_s']} s on {lat['n']} requests."),
        },
    })
    return {"groups": [{"name": f"{model}-monitor", "rules": rules}]}


RULE_FILE_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["groups"], "additionalProperties": False,
    "properties": {"groups": {"type": "array", "minItems": 1, "items": {
        "type": "object", "required": ["name", "rules"], "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "rules": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["alert", "expr"], "additionalProperties": False,
                "properties": {
                    "alert": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"},
                    "expr": {"type": "string", "minLength": 1},
                    "for": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h|d|w|y))+$"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "annotations": {"type": "object",
                                    "additionalProperties": {"type": "string"}},
                }}},
        }}}},
}
"""JSON Schema of a Prometheus alerting-rule file (the subset llmops writes)."""


CHANNELS: tuple[str, ...] = ("webhook", "slack", "email")
"""The alert channels an Alertmanager configuration can route to."""

#: Secret of each channel: the file Alertmanager reads it from (in the secrets folder) and the
#: environment variable an operator fills that file from. Alertmanager 0.25 reads secrets from
#: files (`*_file`) but expands no environment variables, so no secret is written in the config.
SECRET_FILES: dict[str, tuple[str, str]] = {
    "webhook": ("webhook_token", "LLMOPS_ALERT_WEBHOOK_TOKEN"),
    "slack": ("slack_api_url", "LLMOPS_ALERT_SLACK_API_URL"),
    "email": ("smtp_password", "LLMOPS_ALERT_SMTP_PASSWORD"),
}


def _receiver(channel: str, settings: Mapping[str, Any], secrets_dir: str) -> dict[str, Any]:
    secret = f"{secrets_dir.rstrip('/')}/{SECRET_FILES[channel][0]}"
    if channel == "webhook":
        hook: dict[str, Any] = {"url": str(settings["url"]), "send_resolved": True}
        if settings.get("token", False):
            hook["http_config"] = {"authorization": {"credentials_file": secret}}
        return {"name": channel, "webhook_configs": [hook]}
    if channel == "slack":
        return {"name": channel, "slack_configs": [{
            "api_url_file": secret, "channel": str(settings["channel"]), "send_resolved": True,
            "title": '{{ .CommonLabels.alertname }} ({{ .CommonLabels.model }})',
            "text": '{{ range .Alerts }}{{ .Annotations.summary }}: '
                    '{{ .Annotations.description }}\n{{ end }}'}]}
    return {"name": channel, "email_configs": [{
        "to": str(settings["to"]), "from": str(settings["from"]),
        "smarthost": str(settings["smarthost"]), "auth_username": str(settings["username"]),
        "auth_password_file": secret, "send_resolved": True}]}


def alertmanager_config(channels: Mapping[str, Mapping[str, Any]], secrets_dir: str,
                        group_wait: str = "30s", group_interval: str = "5m",
                        repeat_interval: str = "4h") -> dict[str, Any]:
    """Builds an Alertmanager configuration that sends every llmops alert to each channel.

    Args:
        channels: {channel: settings}, channel one of CHANNELS. webhook: url (and token: true
            to send SECRET_FILES' bearer token); slack: channel; email: to, from, smarthost,
            username. Secrets are read from files in `secrets_dir` (SECRET_FILES), never written
            here.
        secrets_dir: The folder holding the secret files where Alertmanager runs.

    Returns:
        The configuration as data (route grouped by alert and model, one receiver per channel).
    """
    unknown = sorted(set(channels) - set(CHANNELS))
    if not channels or unknown:
        raise ValueError(f"alert channels {unknown or '[]'}: allowed {', '.join(CHANNELS)}")
    receivers = [_receiver(c, channels[c], secrets_dir) for c in CHANNELS if c in channels]
    names = [r["name"] for r in receivers]
    return {
        "route": {"receiver": names[0], "group_by": ["alertname", "model"],
                  "group_wait": group_wait, "group_interval": group_interval,
                  "repeat_interval": repeat_interval,
                  "routes": [{"receiver": n, "continue": True} for n in names]},
        "receivers": receivers,
    }


def prometheus_config(target: str, rule_file: str, alertmanager: str | None = None,
                      interval: str = "15s") -> dict[str, Any]:
    """Builds a Prometheus configuration that scrapes `python -m llmops.monitor`'s metrics
    (`target`, host:port), evaluates the monitor stage's alert_rules.yml (`rule_file`) and sends
    firing alerts to an Alertmanager (host:port)."""
    config: dict[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [rule_file],
        "scrape_configs": [{"job_name": "llmops-monitor",
                            "static_configs": [{"targets": [target]}]}],
    }
    if alertmanager:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    return config


def _panel(pid: int, title: str, expr: str, legend: str, x: int, y: int,
           thresholds: list[dict[str, Any]], unit: str, kind: str = "timeseries",
           **defaults: Any) -> dict[str, Any]:
    custom = {"thresholdsStyle": {"mode": "line"}} if kind == "timeseries" else {}
    return {
        "id": pid, "type": kind, "title": title,
        "gridPos": {"h": 8, "w": 12 if kind == "timeseries" else 6, "x": x, "y": y},
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "targets": [{"refId": "A", "expr": expr, "legendFormat": legend,
                     "datasource": {"type": "prometheus", "uid": "${datasource}"}}],
        "fieldConfig": {"defaults": {"unit": unit, "custom": custom, **defaults,
                                     "thresholds": {"mode": "absolute", "steps": thresholds}},
                        "overrides": []},
        "options": {},
    }


def grafana_dashboard(baseline: Mapping[str, Any]) -> dict[str, Any]:
    """Builds a Grafana dashboard (JSON model) of the monitor's metrics for a baseline: one
    time-series panel per figure and for p95 latency, each with its alert threshold drawn as a
    line (red on the alerting side), and one stat panel per alert (firing or not)."""
    model = str(baseline["model"])
    sel = f'model="{model}"'
    panels, pid = [], 1
    for i, (name, fig) in enumerate(baseline["figures"].items()):
        f = BY_NAME[name]
        panels.append(_panel(pid, f"{f.title} (alert below {fig['threshold']:g})",
                             f"{f.gauge}{{{sel}}}", name, 12 * (i % 2), 8 * (i // 2),
                             [{"color": "red", "value": None},
                              {"color": "green", "value": fig["threshold"]}],
                             "percentunit", min=0, max=1))
        pid += 1
    n = len(panels)
    lat = baseline["latency"]
    panels.append(_panel(pid, f"p95 request latency (alert above {lat['threshold_s']:g} s)",
                         f"histogram_quantile({LATENCY_QUANTILE}, sum by (le) "
                         f"(rate({LATENCY}_bucket{{{sel}}}[5m])))", "p95",
                         12 * (n % 2), 8 * (n // 2),
                         [{"color": "green", "value": None},
                          {"color": "red", "value": lat["threshold_s"]}], "s", min=0))
    pid += 1
    row = 8 * (n // 2 + 1)
    alerts = [alert_name(name) for name in baseline["figures"]] + [LATENCY_ALERT]
    for i, alert in enumerate(alerts):
        panels.append(_panel(pid, alert, f'{FIRING}{{alert="{alert}",{sel}}}', alert,
                             6 * (i % 4), row + 8 * (i // 4),
                             [{"color": "green", "value": None}, {"color": "red", "value": 1}],
                             "none", kind="stat", min=0, max=1))
        pid += 1
    return {
        # Grafana's uid allows [a-zA-Z0-9_.-] only (a fine-tuned OpenAI id holds colons)
        "title": f"llmops monitor: {model}",
        "uid": re.sub(r"[^a-zA-Z0-9_.-]", "-", f"llmops-{model}")[:40], "tags": ["llmops"],
        "schemaVersion": 39, "version": 1, "editable": True, "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"}, "timezone": "browser",
        "templating": {"list": [{"name": "datasource", "type": "datasource",
                                 "query": "prometheus", "label": "Prometheus"}]},
        "annotations": {"list": []},
        "panels": panels,
    }


_THRESHOLD_STEPS = {"type": "array", "minItems": 1, "items": {
    "type": "object", "required": ["color", "value"], "additionalProperties": False,
    "properties": {"color": {"type": "string"}, "value": {"type": ["number", "null"]}}}}
_DATASOURCE = {"type": "object", "required": ["type", "uid"],
               "properties": {"type": {"type": "string"}, "uid": {"type": "string"}}}

DASHBOARD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object", "required": ["title", "uid", "schemaVersion", "panels", "time"],
    "properties": {
        "title": {"type": "string", "minLength": 1},
        "uid": {"type": "string", "pattern": "^[a-zA-Z0-9_.-]{1,40}$"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "schemaVersion": {"type": "integer", "minimum": 36},
        "version": {"type": "integer"}, "editable": {"type": "boolean"},
        "refresh": {"type": "string"}, "timezone": {"type": "string"},
        "time": {"type": "object", "required": ["from", "to"],
                 "properties": {"from": {"type": "string"}, "to": {"type": "string"}}},
        "templating": {"type": "object", "properties": {"list": {"type": "array", "items": {
            "type": "object", "required": ["name", "type"],
            "properties": {"name": {"type": "string"},
                           "type": {"enum": ["query", "custom", "constant", "datasource",
                                             "interval", "textbox", "adhoc"]}}}}}},
        "annotations": {"type": "object", "properties": {"list": {"type": "array"}}},
        "panels": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["id", "type", "title", "gridPos", "targets"],
            "properties": {
                "id": {"type": "integer", "minimum": 1},
                "type": {"enum": ["timeseries", "stat", "gauge", "table", "text", "row"]},
                "title": {"type": "string"},
                "gridPos": {"type": "object", "required": ["h", "w", "x", "y"],
                            "additionalProperties": False, "properties": {
                                "h": {"type": "integer", "minimum": 1},
                                "w": {"type": "integer", "minimum": 1, "maximum": 24},
                                "x": {"type": "integer", "minimum": 0, "maximum": 23},
                                "y": {"type": "integer", "minimum": 0}}},
                "datasource": _DATASOURCE,
                "targets": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["refId", "expr"],
                    "properties": {"refId": {"type": "string"},
                                   "expr": {"type": "string", "minLength": 1},
                                   "legendFormat": {"type": "string"},
                                   "datasource": _DATASOURCE}}},
                "fieldConfig": {"type": "object", "required": ["defaults"], "properties": {
                    "defaults": {"type": "object", "properties": {
                        "unit": {"type": "string"}, "min": {"type": "number"},
                        "max": {"type": "number"}, "custom": {"type": "object"},
                        "thresholds": {"type": "object", "required": ["mode", "steps"],
                                       "properties": {
                                           "mode": {"enum": ["absolute", "percentage"]},
                                           "steps": _THRESHOLD_STEPS}}}},
                    "overrides": {"type": "array"}}},
                "options": {"type": "object"}}}},
    },
}
"""JSON Schema of the parts of Grafana's dashboard JSON model llmops writes (Grafana's documented
model: https://grafana.com/docs/grafana/latest/dashboards/build-dashboards/view-dashboard-json-model/;
Grafana itself is not installed here)."""
