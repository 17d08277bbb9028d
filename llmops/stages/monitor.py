"""Stage "monitor": the evaluated baseline, a probe set and Prometheus alert rules, after deploy.

Writes baseline.json (the stage's report: the tuned model's figures from eval with their sample
sizes and alert thresholds, latency percentiles of the deploy smoke test, the probe set's sha256),
probes.jsonl (held-out test rows with their reference answers, drawn with the run's seed) and
alert_rules.yml (Prometheus rule file, parsed back and checked against its schema), prometheus.yml
(scrapes the monitor's metrics, evaluates those rules) and grafana_dashboard.json (a panel per
figure and alert, thresholds drawn).
`python -m llmops.monitor RUN_DIR` probes the live endpoint against them. Like deploy, it refuses
a model whose eval did not pass unless deploy.allow_failed_gates=true. Always runs (the stage
table's `always_run`): it reads the deploy stage's fresh smoke-test latencies.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from llmops.compiler.builders.monitor import MonitorParams
from llmops.core.context import StageContext
from llmops.core.plan import report_name
from llmops.errors import StageError

REPORT_NAME = report_name("monitor")
PROBES_FILE = "probes.jsonl"
RULES_FILE = "alert_rules.yml"
PROMETHEUS_FILE = "prometheus.yml"
DASHBOARD_FILE = "grafana_dashboard.json"
ALERTMANAGER_FILE = "alertmanager.yml"
#: Where prometheus.yml sends alerts until pointed at your Alertmanager (its default port).
ALERTMANAGER = "127.0.0.1:9093"


def _read(path: Path, stage: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise StageError(f"monitor: cannot read {path} ({exc}). Rerun the {stage} stage.") from exc


def _gate_threshold(gates: list[dict[str, Any]], metric: str) -> float | None:
    """Returns the highest threshold of the applied min-direction gates on a metric, or None."""
    bounds = [float(g["threshold"]) for g in gates if g.get("metric") == metric
              and not g.get("skipped") and g.get("direction") == "min"
              and g.get("threshold") is not None]
    return max(bounds) if bounds else None


def figures(eval_report: dict[str, Any], params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Returns the baseline figures: each monitored metric the eval measured, with its rows."""
    from llmops.serving.alerts import FIGURES, rate_threshold

    out = {}
    for f in FIGURES:
        kind, metric = f.metric.split(".", 1)
        side = eval_report["metrics_by_kind"].get(kind) or {}
        value, n = (side.get("tuned") or {}).get(metric), int(side.get("count") or 0)
        if value is None or not n:
            continue
        gate = _gate_threshold(eval_report["gates"], f.metric)
        drop = float(params["thresholds"][f"{f.name}_drop"])
        out[f.name] = {"metric": f.metric, "value": float(value), "n": n, "gate_threshold": gate,
                       "allowed_drop": drop, "threshold": rate_threshold(float(value), drop, gate),
                       "for": params["for"][f.name]}
    return out


def draw_probes(test_rows: list[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """Draws up to n test rows (seeded, in test-split order), each keeping its reference answer."""
    picked = sorted(random.Random(seed).sample(range(len(test_rows)), min(n, len(test_rows))))
    return [test_rows[i] for i in picked]


def _call_syntax(export: Path) -> str | None:
    from llmops.scoring.parsers import syntax_of
    from llmops.stages.common import export_tokenizer

    return syntax_of(export_tokenizer(export / "merged").chat_template)


def write_rules(path: Path, rules: dict[str, Any]) -> None:
    """Writes the rule file as YAML and checks it by parsing it back against its schema.

    Raises:
        StageError: If the file read back differs from the rules or breaks the schema.
    """
    import jsonschema
    import yaml

    from llmops.serving.alerts import RULE_FILE_SCHEMA

    path.write_text(yaml.safe_dump(rules, sort_keys=False, allow_unicode=True), "utf-8")
    back = yaml.safe_load(path.read_text("utf-8"))
    try:
        jsonschema.validate(back, RULE_FILE_SCHEMA)
    except jsonschema.ValidationError as exc:
        raise StageError(f"monitor: {path.name} breaks the Prometheus rule-file schema at "
                         f"{'/'.join(map(str, exc.absolute_path))}: {exc.message}.") from exc
    if back != rules:
        raise StageError(f"monitor: {path.name} does not read back as written.")


def write_monitoring(out_dir: Path, baseline: dict[str, Any]) -> None:
    """Writes prometheus.yml (scrapes the monitor's metrics, evaluates alert_rules.yml next to
    it, alerts to monitor.alertmanager.url), alertmanager.yml (with monitor.alert_channels: one
    receiver per channel, secrets read from files) and grafana_dashboard.json (checked against
    the schema of the parts of Grafana's dashboard JSON model it uses).

    Raises:
        StageError: If the dashboard breaks that schema.
    """
    import jsonschema
    import yaml

    from llmops.files import write_json
    from llmops.serving.alerts import DASHBOARD_SCHEMA, grafana_dashboard, prometheus_config

    target = f"{baseline['metrics_host']}:{baseline['metrics_port']}"
    alerting = baseline.get("alerting")
    manager = alerting["alertmanager"]["url"] if alerting else ALERTMANAGER
    (out_dir / PROMETHEUS_FILE).write_text(yaml.safe_dump(
        prometheus_config(target, RULES_FILE, manager), sort_keys=False), "utf-8")
    if alerting:
        from llmops.serving.alerts import alertmanager_config

        a = alerting["alertmanager"]
        settings = {"webhook": {"url": a["webhook_url"], "token": a["webhook_token"]},
                    "slack": {"channel": a["slack_channel"]},
                    "email": {"to": a["email_to"], "from": a["email_from"],
                              "smarthost": a["email_smarthost"],
                              "username": a["email_username"]}}
        (out_dir / ALERTMANAGER_FILE).write_text(yaml.safe_dump(alertmanager_config(
            {c: settings[c] for c in alerting["channels"]}, a["secrets_dir"]),
            sort_keys=False), "utf-8")
    dashboard = grafana_dashboard(baseline)
    try:
        jsonschema.validate(dashboard, DASHBOARD_SCHEMA)
    except jsonschema.ValidationError as exc:
        raise StageError(f"monitor: {DASHBOARD_FILE} breaks the Grafana dashboard schema at "
                         f"{'/'.join(map(str, exc.absolute_path))}: {exc.message}.") from exc
    write_json(out_dir / DASHBOARD_FILE, dashboard)


def run(params: MonitorParams, inputs: dict[str, Path], out_dir: Path, ctx: StageContext) -> dict:
    """Writes baseline.json, probes.jsonl, alert_rules.yml, prometheus.yml and
    grafana_dashboard.json for the deployed model.

    Params read: probes, seed, significance, thresholds, for, metrics_host, metrics_port,
    allow_public_bind, request_timeout_s, max_tokens, allow_failed_gates, limits (row_bytes,
    json_depth, http_total_seconds: the defaults of `python -m llmops.monitor`).
    Inputs: "eval" (eval_report.json), "deploy" (integration_config.json, smoke_test.json),
    "data" (test.jsonl), "export" (merged/ tokenizer: the call syntax; absent with
    train.backend=openai, whose answers are read as Hermes blocks).

    Returns:
        The baseline (also written as baseline.json).
    """
    from llmops.files import read_jsonl, write_json, write_jsonl
    from llmops.serving.alerts import alert_rules, latency_percentiles, latency_threshold
    from llmops.serving.chat_api import API_SYNTAX
    from llmops.stages.deploy import check_gates

    out_dir = Path(out_dir)
    verdict = check_gates({"allow_failed_gates": params["allow_failed_gates"]}, inputs)
    eval_report = _read(Path(inputs["eval"]) / report_name("eval"), "eval")
    deploy = Path(inputs["deploy"])
    integration = _read(deploy / "integration_config.json", "deploy")
    smoke = deploy / "smoke_test.json"
    seconds = [float(r["seconds"]) for r in _read(smoke, "deploy")["results"]] \
        if smoke.is_file() else []
    latency = {**latency_percentiles(seconds),
               "source": "deploy smoke_test.json" if seconds else "none (no smoke test timed)",
               "for": params["for"]["latency"]}
    t = params["thresholds"]
    latency["threshold_s"] = latency_threshold(latency["p95_s"], float(t["latency_factor"]),
                                               float(t["latency_min_s"]))
    probes = draw_probes(read_jsonl(Path(inputs["data"]) / "test.jsonl"), int(params["probes"]),
                         int(params["seed"]))
    if not probes:
        raise StageError("monitor: the test split has no rows to probe with. Raise "
                         "data.test_fraction or data.n_examples.")
    write_jsonl(out_dir / PROBES_FILE, probes)
    figs = figures(eval_report, params)
    if not figs:
        raise StageError("monitor: eval measured none of the monitored figures (tool calls, "
                         "refusals) on the test split, so there is no baseline to watch.")
    kinds: dict[str, int] = {}
    for row in probes:
        kind = (row.get("meta") or {}).get("kind") or "chat"
        kinds[kind] = kinds.get(kind, 0) + 1
    baseline = {
        "model": integration["model"], "endpoint": integration["base_url"],
        "target": integration["target"],
        # train.backend=openai has no export: the API's tool_calls are written as Hermes
        # blocks (llmops.serving.chat_api.answer_text), as eval read them
        "call_syntax": _call_syntax(Path(inputs["export"])) if inputs.get("export")
        else API_SYNTAX,
        "figures": figs, "latency": latency, "significance": float(params["significance"]),
        "probes": {"file": PROBES_FILE, "n": len(probes), "kinds": kinds,
                   "sha256": hashlib.sha256((out_dir / PROBES_FILE).read_bytes()).hexdigest()},
        "metrics_host": params["metrics_host"], "metrics_port": int(params["metrics_port"]),
        "allow_public_bind": bool(params["allow_public_bind"]),
        "request_timeout_s": float(params["request_timeout_s"]),
        "limits": {"row_bytes": int(params["limits"]["row_bytes"]),
                   "json_depth": int(params["limits"]["json_depth"]),
                   "http_total_seconds": float(params["limits"]["http_total_seconds"])},
        "max_tokens": int(params["max_tokens"]),
        "eval": {"passed": eval_report.get("passed"), "n": eval_report.get("n"), **verdict},
        "rules": RULES_FILE, "prometheus": PROMETHEUS_FILE, "dashboard": DASHBOARD_FILE,
    }
    if params.get("alerting"):
        baseline["alerting"] = {**params["alerting"], "file": ALERTMANAGER_FILE}
    write_rules(out_dir / RULES_FILE, alert_rules(baseline))
    write_monitoring(out_dir, baseline)
    write_json(out_dir / REPORT_NAME, baseline)
    ctx.logger.info("monitor: baseline %s; %d probes; rules in %s",
                    ", ".join(f"{k}={v['value']:.3f} (n={v['n']})" for k, v in figs.items()),
                    len(probes), RULES_FILE)
    return baseline
