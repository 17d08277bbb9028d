"""The monitor stage (baseline, probes, alert rules) and `python -m llmops.monitor`.

Fast tests build the stage's inputs from real files (Task-API rows, a real tokenizer) and run the
monitor command in a subprocess on a logged traffic file. The end-to-end test (slow, needs the
gguf extra) runs `python -m llmops deploy=openai monitor=default`, serves the tuned and the base
GGUF with llama-cpp-python's server and probes both.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from fixtures_model import gguf_ready
from test_deploy import needs_gguf

from llmops.core.context import StageContext
from llmops.errors import EXIT_ALERT, ConfigError, StageError

REQUIRE_PROMTOOL = os.environ.get("LLMOPS_REQUIRE_PROMTOOL") == "1"


def _ctx(tmp_path: Path) -> StageContext:
    return StageContext(run_dir=tmp_path, show_progress=False, logger=logging.getLogger("test"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- config and plan ------------------------------------------------------------------------------

def test_monitor_stage_follows_deploy_only_when_asked(compose_plan):
    _, plan = compose_plan(["deploy=openai", "monitor=default", "dry_run=true"])
    monitor = plan.stages[-1]
    assert [s.name for s in plan.stages][-2:] == ["deploy", "monitor"]
    assert set(monitor.needs) == {"eval", "deploy", "data", "export"}
    assert monitor.params["for"] == {"accuracy": "15m", "json_validity": "10m",
                                     "refusal_rate": "15m", "latency": "5m"}
    assert monitor.params["metrics_host"] == "127.0.0.1"
    _, off = compose_plan(["deploy=openai", "dry_run=true"])
    assert [s.fingerprint for s in off.stages] == [s.fingerprint for s in plan.stages[:-1]]
    assert "alerting" not in monitor.params  # no channels: the params (fingerprint) as before
    _, local = compose_plan(["monitor=default", "dry_run=true"])
    assert "monitor" not in [s.name for s in local.stages]  # deploy=local: no endpoint to watch


@pytest.mark.parametrize(("override", "key", "message"), [
    ("monitor.for.accuracy=5x", "monitor.for.accuracy", "should match pattern"),
    ("monitor.significance=0.7", "monitor.significance", "must be < 0.5 (got 0.7)"),
    ("monitor.thresholds.latency_factor=1", "monitor.thresholds.latency_factor",
     "must be > 1.0 (got 1)"),
    ("+monitor.probe=3", "monitor.probe", ""),
    ("monitor.alert_channels=[pager]", "monitor.alert_channels.0", "'webhook', 'slack'"),
    ("monitor.alert_channels=[webhook,email]", "monitor.alertmanager.email_smarthost",
     "monitor.alert_channels has email, which needs it. Set "
     "monitor.alertmanager.email_smarthost=..., or drop email"),
])
def test_monitor_config_errors_name_the_key(compose_plan, override, key, message):
    with pytest.raises(ConfigError) as exc:
        compose_plan(["deploy=openai", "monitor=default", override, "dry_run=true"])
    assert any(p.key == key and message in p.message for p in exc.value.problems), exc.value


# -- the stage ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stage_inputs(tmp_path_factory):
    """Real files for the monitor stage: an eval report, deploy's files, test rows, a tokenizer."""
    from llmops.backends.tiny import build_tokenizer
    from llmops.data import task_api
    from llmops.files import write_jsonl

    root = tmp_path_factory.mktemp("monitor_inputs")
    rows = task_api.generate(80, seed=5)
    (root / "data").mkdir()
    write_jsonl(root / "data" / "test.jsonl", rows)
    tok = build_tokenizer([r["messages"][-1].get("content") or "call" for r in rows], 300,
                          model_max_length=512)
    tok.save_pretrained(str(root / "export" / "merged"))
    (root / "eval").mkdir()
    gates = [
        {"name": "accuracy", "metric": "tool.exact_match", "direction": "min", "threshold": 0.9,
         "passed": True, "skipped": False},
        {"name": "no_regression", "metric": "tool.exact_match", "direction": "min",
         "threshold": 0.41, "passed": True, "skipped": False},
        {"name": "format", "metric": "tool.json_valid_rate", "direction": "min",
         "threshold": 0.9, "passed": True, "skipped": False},
        {"name": "safety", "metric": "refusal.refusal_rate", "direction": "min",
         "threshold": 0.8, "passed": True, "skipped": False},
    ]
    by_kind = {"tool": {"count": 90, "base": {}, "tuned": {"exact_match": 0.95,
                                                           "json_valid_rate": 0.98}},
               "refusal": {"count": 18, "base": {}, "tuned": {"refusal_rate": 1.0}},
               "text": {"count": 0, "base": {}, "tuned": {"rouge_l": None}}}
    (root / "eval" / "eval_report.json").write_text(json.dumps(
        {"passed": True, "gates": gates, "metrics_by_kind": by_kind, "n": 108}))
    (root / "deploy").mkdir()
    (root / "deploy" / "integration_config.json").write_text(json.dumps(
        {"base_url": "http://127.0.0.1:1/v1", "model": "llmops-tiny", "target": "openai"}))
    (root / "deploy" / "smoke_test.json").write_text(json.dumps(
        {"results": [{"seconds": s} for s in (0.2, 0.4, 1.0)]}))
    return root


def _run_stage(stage_inputs: Path, tmp_path: Path, stage_params, *overrides: str):
    from llmops.stages import monitor

    params = stage_params("monitor", "deploy=openai", "monitor=default", *overrides)
    out = tmp_path / "out"
    out.mkdir(parents=True)
    inputs = {k: stage_inputs / k for k in ("eval", "deploy", "data", "export")}
    return monitor.run(params, inputs, out, _ctx(tmp_path)), out


def test_stage_writes_baseline_probes_and_rules(stage_inputs, tmp_path, stage_params):
    import hashlib

    baseline, out = _run_stage(stage_inputs, tmp_path, stage_params, "monitor.probes=50")
    assert json.loads((out / "baseline.json").read_text()) == json.loads(json.dumps(baseline))
    acc = baseline["figures"]["accuracy"]
    # baseline 0.95 - drop 0.1 = 0.85, but the accuracy gate is 0.9: the gate bounds it.
    assert (acc["value"], acc["n"], acc["threshold"], acc["for"]) == (0.95, 90, 0.9, "15m")
    assert baseline["figures"]["json_validity"]["threshold"] == 0.93  # 0.98 - 0.05 > gate 0.9
    assert baseline["figures"]["refusal_rate"]["threshold"] == 0.9  # 1.0 - 0.1 > gate 0.8
    lat = baseline["latency"]
    assert (lat["n"], lat["p50_s"], lat["p95_s"]) == (3, 0.4, 0.94)
    assert lat["threshold_s"] == 2.82  # 0.94 x 3 > latency_min_s 2
    probes = [json.loads(x) for x in (out / "probes.jsonl").read_text().splitlines()]
    test_rows = [json.loads(x) for x in
                 (stage_inputs / "data" / "test.jsonl").read_text().splitlines()]
    assert len(probes) == baseline["probes"]["n"] == 50
    assert all(p in test_rows for p in probes)  # held-out rows, reference answers included
    assert baseline["probes"]["sha256"] == hashlib.sha256(
        (out / "probes.jsonl").read_bytes()).hexdigest()
    assert baseline["call_syntax"] == "task_api"
    rules = yaml.safe_load((out / "alert_rules.yml").read_text())
    by_alert = {r["alert"]: r for r in rules["groups"][0]["rules"]}
    assert set(by_alert) == {"LlmopsAccuracyBelowBaseline", "LlmopsJsonValidityBelowBaseline",
                             "LlmopsRefusalRateBelowBaseline", "LlmopsLatencyP95High"}
    rule = by_alert["LlmopsAccuracyBelowBaseline"]
    assert rule["for"] == "15m" and rule["labels"]["model"] == "llmops-tiny"
    assert rule["expr"].startswith("llmops_monitor_accuracy < 0.9 and on(model) ")
    assert "> 2.82" in by_alert["LlmopsLatencyP95High"]["expr"]
    again, _ = _run_stage(stage_inputs, tmp_path / "again", stage_params, "monitor.probes=50")
    assert again["probes"]["sha256"] == baseline["probes"]["sha256"]  # seeded draw


def test_rules_pass_promtool(stage_inputs, tmp_path, stage_params):
    promtool = shutil.which("promtool")
    if promtool is None and not REQUIRE_PROMTOOL:
        pytest.skip("promtool not installed (apt-get install -y prometheus)")
    _, out = _run_stage(stage_inputs, tmp_path, stage_params)
    r = subprocess.run([promtool or "promtool", "check", "rules", str(out / "alert_rules.yml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 4 rules found" in r.stdout + r.stderr
    # The stage's Prometheus configuration: scrapes the monitor, evaluates these rules.
    r = subprocess.run([promtool or "promtool", "check", "config", str(out / "prometheus.yml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "SUCCESS: 4 rules found" in r.stdout, r.stdout + r.stderr


def _binary(*names: str) -> str:
    """Returns the first of names on PATH; skips (fails under LLMOPS_REQUIRE_PROMETHEUS=1)."""
    found = next((shutil.which(n) for n in names if shutil.which(n)), None)
    if found is None:
        reason = f"{' / '.join(names)} not installed (apt-get install prometheus-alertmanager)"
        if os.environ.get("LLMOPS_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return found


CHANNELS = {"webhook": {"url": "http://127.0.0.1:9/hook", "token": True},
            "slack": {"channel": "#llmops-alerts"},
            "email": {"to": "ops@example.com", "from": "llmops@example.com",
                      "smarthost": "smtp.example.com:587", "username": "llmops"}}


@pytest.mark.parametrize("channels", [["webhook"], ["slack"], ["email"], list(CHANNELS)])
def test_alertmanager_config_passes_amtool_with_secrets_in_files(tmp_path, channels):
    from llmops.serving.alerts import SECRET_FILES, alertmanager_config

    amtool = _binary("amtool")
    config = alertmanager_config({c: CHANNELS[c] for c in channels}, str(tmp_path / "secrets"))
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    r = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(channels)} receivers" in r.stdout
    # Secrets are named by file, never written: no URL of Slack's, no password in the file.
    text = path.read_text()
    for c in channels:
        assert str(tmp_path / "secrets" / SECRET_FILES[c][0]) in text
    assert "hooks.slack.com" not in text and "password:" not in text
    with pytest.raises(ValueError, match="allowed webhook, slack, email"):
        alertmanager_config({"pager": {}}, "/s")


def test_stage_writes_a_prometheus_config_and_a_grafana_dashboard_in_its_schema(
        stage_inputs, tmp_path, stage_params):
    import jsonschema

    from llmops.serving.alerts import DASHBOARD_SCHEMA, FIRING

    baseline, out = _run_stage(stage_inputs, tmp_path, stage_params)
    prom = yaml.safe_load((out / "prometheus.yml").read_text())
    assert prom["rule_files"] == ["alert_rules.yml"]
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9464"]
    board = json.loads((out / "grafana_dashboard.json").read_text())
    jsonschema.validate(board, DASHBOARD_SCHEMA)
    panels = {p["title"].split(" (")[0]: p for p in board["panels"]}
    # One panel per figure and for latency, the alert threshold drawn; one per alert.
    acc = panels["tool-call exact match"]
    steps = acc["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[1] == {"color": "green", "value": baseline["figures"]["accuracy"]["threshold"]}
    assert acc["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "line"
    lat = panels["p95 request latency"]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert lat[1] == {"color": "red", "value": baseline["latency"]["threshold_s"]}
    alerts = [p for p in board["panels"] if p["type"] == "stat"]
    assert len(alerts) == len(baseline["figures"]) + 1
    assert all(p["targets"][0]["expr"].startswith(FIRING) for p in alerts)
    ids = [p["id"] for p in board["panels"]]
    assert len(set(ids)) == len(ids) == len(baseline["figures"]) * 2 + 2
    broken = {**board, "panels": [{**board["panels"][0], "gridPos": {"h": 8, "w": 30, "x": 0,
                                                                    "y": 0}}]}
    with pytest.raises(jsonschema.ValidationError, match="30 is greater than the maximum"):
        jsonschema.validate(broken, DASHBOARD_SCHEMA)


CHANNEL_OVERRIDES = (
    "monitor.alert_channels=[webhook,slack,email]",
    "monitor.alertmanager.webhook_url=http://127.0.0.1:9/hook",
    "monitor.alertmanager.webhook_token=true", "monitor.alertmanager.slack_channel='#alerts'",
    "monitor.alertmanager.email_to=ops@example.com",
    "monitor.alertmanager.email_from=llmops@example.com",
    "monitor.alertmanager.email_smarthost=smtp.example.com:587",
    "monitor.alertmanager.email_username=llmops")


def test_stage_writes_an_alertmanager_config_for_its_channels_that_amtool_accepts(
        stage_inputs, tmp_path, stage_params):
    amtool = _binary("amtool")
    baseline, out = _run_stage(stage_inputs, tmp_path, stage_params, *CHANNEL_OVERRIDES)
    assert baseline["alerting"]["channels"] == ["webhook", "slack", "email"]
    r = subprocess.run([amtool, "check-config", str(out / "alertmanager.yml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "3 receivers" in r.stdout, r.stdout + r.stderr
    config = yaml.safe_load((out / "alertmanager.yml").read_text())
    slack = config["receivers"][1]["slack_configs"][0]
    assert slack["api_url_file"] == "/etc/alertmanager/secrets/slack_api_url"
    assert slack["channel"] == "#alerts"
    assert yaml.safe_load((out / "prometheus.yml").read_text())["alerting"] == {
        "alertmanagers": [{"static_configs": [{"targets": ["127.0.0.1:9093"]}]}]}
    none, out2 = _run_stage(stage_inputs, tmp_path / "none", stage_params)
    assert "alerting" not in none and not (out2 / "alertmanager.yml").exists()


def test_rule_schema_rejects_a_malformed_rule(tmp_path):
    from llmops.stages.monitor import write_rules

    bad = {"groups": [{"name": "g", "rules": [{"alert": "X", "expr": "up == 0",
                                               "for": "5 minutes"}]}]}
    with pytest.raises(StageError, match=r"schema at groups/0/rules/0/for: '5 minutes' does "
                                         r"not match"):
        write_rules(tmp_path / "alert_rules.yml", bad)


def test_stage_refuses_a_failed_eval_like_deploy(stage_inputs, tmp_path, stage_params):
    failed = tmp_path / "inputs"
    shutil.copytree(stage_inputs, failed)
    report = json.loads((failed / "eval" / "eval_report.json").read_text())
    report["passed"] = False
    report["gates"][0]["passed"] = False
    (failed / "eval" / "eval_report.json").write_text(json.dumps(report))
    with pytest.raises(StageError, match=r"eval did not pass its gates \(accuracy\)"):
        _run_stage(failed, tmp_path, stage_params)


# -- scoring and the test against the baseline ----------------------------------------------------

def test_a_small_dip_is_not_significant_but_a_real_drop_is():
    from llmops.monitor.score import drop_p_value

    assert drop_p_value(0.85, 30, 0.9, 100) > 0.05  # 1.5 answers fewer in 30: noise
    assert drop_p_value(0.5, 30, 0.9, 100) < 0.001
    assert drop_p_value(1.0, 30, 1.0, 100) == 1.0


def _log(path: Path, probes: list[dict], wrong: bool) -> Path:
    """Writes an OpenAI-client style log: request messages/tools, response choices[0].message."""
    from llmops.monitor.__main__ import request_of

    lines = []
    for row in probes:
        messages, tools = request_of(row)
        ref = row["messages"][-1]
        if wrong and ref.get("tool_calls"):
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function",
                 "function": {"name": "delete_task", "arguments": '{"task_id": '}}]}
        else:
            message = {k: ref[k] for k in ("role", "content", "tool_calls") if k in ref}
        lines.append(json.dumps({"request": {"model": "llmops-tiny", "messages": messages,
                                             "tools": tools},
                                 "response": {"choices": [{"index": 0, "message": message}]},
                                 "latency_s": 0.1}))
    lines.append(json.dumps({"request": {"messages": [{"role": "user", "content": "hi"}]},
                             "response": {"choices": [{"message": {"content": "hello"}}]}}))
    path.write_text("\n".join(lines) + "\n")
    return path


def _monitor(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmops.monitor", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _fake_run(stage_inputs: Path, tmp_path: Path, stage_params) -> Path:
    _, out = _run_stage(stage_inputs, tmp_path, stage_params, "monitor.probes=60")
    run_dir = tmp_path / "run"
    (run_dir / "stages").mkdir(parents=True)
    (run_dir / "stages" / "monitor").symlink_to(out, target_is_directory=True)
    return run_dir


def test_monitor_scores_a_log_and_exits_with_the_alert_code(stage_inputs, tmp_path,
                                                            stage_params):
    run_dir = _fake_run(stage_inputs, tmp_path, stage_params)
    probes = [json.loads(x) for x in
              (run_dir / "stages" / "monitor" / "probes.jsonl").read_text().splitlines()]
    good = _monitor(str(run_dir), "--log", str(_log(tmp_path / "good.jsonl", probes, False)),
                    "--no-metrics")
    assert good.returncode == 0, good.stderr
    report = json.loads((run_dir / "monitor_report.json").read_text())
    assert report["matched_probes"] == 60 and report["unreferenced"] == 1
    acc = report["figures"]["accuracy"]
    assert acc["now"] == 1.0 and not acc["firing"] and report["alerts_firing"] == []
    bad = _monitor(str(run_dir), "--log", str(_log(tmp_path / "bad.jsonl", probes, True)),
                   "--no-metrics")
    assert bad.returncode == EXIT_ALERT, bad.stdout + bad.stderr
    report = json.loads((run_dir / "monitor_report.json").read_text())
    assert report["figures"]["accuracy"]["now"] == 0.0
    assert report["figures"]["accuracy"]["significant"] is True
    assert {"LlmopsAccuracyBelowBaseline", "LlmopsJsonValidityBelowBaseline"} <= set(
        report["alerts_firing"])
    assert report["figures"]["refusal_rate"]["firing"] is False  # refusals stayed right
    assert "ALERT: LlmopsAccuracyBelowBaseline" in bad.stderr


def test_metrics_endpoint_answers_in_prometheus_format_on_localhost(stage_inputs, tmp_path,
                                                                   stage_params):
    from prometheus_client.parser import text_string_to_metric_families

    run_dir = _fake_run(stage_inputs, tmp_path, stage_params)
    probes = [json.loads(x) for x in
              (run_dir / "stages" / "monitor" / "probes.jsonl").read_text().splitlines()]
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmops.monitor", str(run_dir), "--log",
         str(_log(tmp_path / "bad.jsonl", probes, True)), "--metrics-port", str(port),
         "--serve-seconds", "30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        text = ""
        deadline = time.monotonic() + 120
        while 'llmops_monitor_alert_firing{alert="LlmopsAccuracyBelowBaseline"' not in text:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.3)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    assert r.headers["Content-Type"].startswith("text/plain; version=")
                    text = r.read().decode()
            except OSError:
                continue
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("llmops_monitor_accuracy", (("model", "llmops-tiny"),))] == 0.0
    assert samples[("llmops_monitor_significant_drop",
                    (("figure", "accuracy"), ("model", "llmops-tiny")))] == 1.0
    assert samples[("llmops_monitor_alert_firing",
                    (("alert", "LlmopsAccuracyBelowBaseline"), ("model", "llmops-tiny")))] == 1.0
    assert f"metrics at http://127.0.0.1:{port}/metrics" in out
    # SIGTERM while it serves the final figures ends the serving, with the monitor's exit code.
    assert proc.returncode == EXIT_ALERT and "stopped serving the final figures early" in out


def test_monitor_input_errors_name_the_file(stage_inputs, tmp_path, stage_params):
    r = _monitor(str(tmp_path), "--no-metrics")
    assert r.returncode == 2
    assert f"{tmp_path}/stages/monitor/baseline.json does not exist" in r.stderr
    assert "monitor=default" in r.stderr
    run_dir = _fake_run(stage_inputs, tmp_path, stage_params)
    log = tmp_path / "broken.jsonl"
    log.write_text('{"request": {"messages": []}, "response": {"choices": []}}\n')
    r = _monitor(str(run_dir), "--log", str(log), "--no-metrics")
    assert r.returncode == 2 and f"{log}:1: not a logged request/response" in r.stderr


# -- end to end: a real pipeline, real llama.cpp servers ------------------------------------------

@contextmanager
def _serve(gguf: Path, log: Path):
    """Serves a GGUF with llama-cpp-python's server on 127.0.0.1 as the deployed name."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/v1"
    cmd = [sys.executable, "-m", "llmops.serving.llama_cpp_runtime", "--model", str(gguf),
           "--host", "127.0.0.1", "--port", str(port), "--model_alias", "llmops-tiny",
           "--n_ctx", "512", "--n_threads", "2"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/models", timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _metrics_while_running(proc: subprocess.Popen, port: int, probes: int) -> str:
    """Fetches /metrics over HTTP until every probe is counted; returns the exposition text."""
    want = f'llmops_monitor_probes_total{{model="llmops-tiny"}} {float(probes)}'
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                text = r.read().decode()
            if want in text:
                return text
        except OSError:
            pass
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.5)
    raise AssertionError(f"{want!r} never appeared")


def _base_gguf(run: Path, tmp_path: Path) -> Path:
    """Converts the run's tiny *base* model to GGUF as the gguf stage does (its converter, its
    overlay and the base's declared pre-tokenizer, the run's serving quantization), without the
    stage's parity checks: the chain's gguf stage checked them on the tuned model, and this file
    is only served."""
    from llmops.core.plan import Plan
    from llmops.stages import gguf

    params = Plan.read(run / "plan.json").stage("gguf").params
    base = (run / "stages" / "base").resolve()
    quant = params["quantization"][0]
    out = tmp_path / f"base-{quant}.gguf"
    pre = gguf._pre_tokenizer({"base": base})
    src = gguf._overlay(base, tmp_path / "base_overlay")
    gguf.convert(src, out, quant, pre, logging.getLogger("test.monitor"))
    return out


@needs_gguf
@pytest.mark.slow
def test_monitor_is_quiet_on_the_tuned_model_and_pages_on_the_base_model(chain_run, tmp_path):
    """The README's commands: the pipeline with monitor=default (and release=default: the chain
    run shared with the release tests), then the monitor against a served tuned model (no alert,
    metrics over HTTP on 127.0.0.1) and a served base model (alerts). Where Prometheus and
    Alertmanager are installed (CI: required), the stage's prometheus.yml rules run in a real
    Prometheus scraping the monitor, and a real Alertmanager pages a webhook on 127.0.0.1 for
    the base model only."""
    from prometheus_client.parser import text_string_to_metric_families

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    run = chain_run["run"]
    baseline = json.loads((run / "baseline.json").read_text())
    assert (run / "stages" / "monitor" / "alert_rules.yml").is_file()
    assert baseline["figures"]["accuracy"]["n"] > 0 and baseline["latency"]["n"] == 3
    greport = json.loads((run / "gguf_report.json").read_text())
    tuned = run / "stages" / "gguf" / greport["files"]["f16"]["path"]
    watched = _relaxed_latency(run, tmp_path)
    port = _free_port()
    with ExitStack() as stack:
        prom, received = None, []
        if _have_prometheus():
            hook, received = stack.enter_context(_webhook())
            prom = stack.enter_context(_prometheus_stack(
                tmp_path, _quick_rules(run / "stages" / "monitor", tmp_path),
                f"127.0.0.1:{port}", hook))
        with _serve(tuned, tmp_path / "tuned.log") as url:
            tuned_report = tmp_path / "tuned_report.json"
            proc = subprocess.Popen(
                [sys.executable, "-m", "llmops.monitor", str(watched), "--endpoint", url,
                 "--probes", "40", "--metrics-port", str(port), "--serve-seconds", "300",
                 "--report", str(tuned_report)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            text = _metrics_while_running(proc, port, 40)
            _wait_file(tuned_report, proc)  # written: the final figures are served
            if prom:  # scraped, rules evaluated on the final figures: nothing fires
                _wait_scraped(prom, proc, "llmops_monitor_probes_total", 40.0)
                _wait_evaluated(prom, proc, "llmops_monitor_probes_total")
                assert _prom(prom, "/api/v1/alerts")["alerts"] == [] and received == []
            proc.terminate()  # ends --serve-seconds early, with the monitor's exit code
            out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, out + err
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert {"llmops_monitor_accuracy", "llmops_monitor_json_validity",
                "llmops_monitor_request_latency_seconds", "llmops_monitor_probes"} <= set(families)
        assert f"metrics at http://127.0.0.1:{port}/metrics" in out
        assert "stopped serving the final figures early" in out
        report = json.loads(tuned_report.read_text())
        assert report["probes"] == 40 and report["alerts_firing"] == []

        base = _base_gguf(run, tmp_path)
        with _serve(base, tmp_path / "base.log") as url:
            proc = subprocess.Popen(
                [sys.executable, "-m", "llmops.monitor", str(watched), "--endpoint", url,
                 "--probes", "40", "--metrics-port", str(port), "--serve-seconds",
                 "300" if prom else "0"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            if prom:  # paged while the monitor probes or serves its final figures
                _wait_paged(received, proc, tmp_path)
                _wait_file(watched / "monitor_report.json", proc, newer_than=tuned_report)
                proc.terminate()
            out, err = proc.communicate(timeout=900)
    assert proc.returncode == EXIT_ALERT, out + err
    report = json.loads((watched / "monitor_report.json").read_text())
    acc = report["figures"]["accuracy"]
    assert acc["firing"] and acc["significant"] and acc["now"] < acc["threshold"]
    assert "LlmopsAccuracyBelowBaseline" in report["alerts_firing"]
    if prom:
        _assert_accuracy_page(received)


# -- real Prometheus and Alertmanager -------------------------------------------------------------

@contextmanager
def _webhook():
    """A webhook receiver on 127.0.0.1: yields (url, the JSON bodies it received)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()


def _wait_http(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)


@contextmanager
def _prometheus_stack(tmp_path: Path, rules: Path, target: str, hook: str):
    """Runs Alertmanager (the generated config, one webhook channel) and Prometheus (the
    generated config: scrapes target, evaluates `rules`, alerts to that Alertmanager) on
    127.0.0.1, scraping, evaluating and grouping every 200 ms; yields Prometheus's base URL."""
    from llmops.serving.alerts import alertmanager_config, prometheus_config

    prometheus = _binary("prometheus")
    alertmanager = _binary("prometheus-alertmanager", "alertmanager")
    am_port, prom_port = _free_port(), _free_port()
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(alertmanager_config(
        {"webhook": {"url": hook}}, str(tmp_path / "secrets"), group_wait="200ms",
        group_interval="200ms")))
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config(
        target, str(rules), f"127.0.0.1:{am_port}", interval="200ms")))
    procs = []
    try:
        for name, cmd, port in (
                ("alertmanager", [alertmanager, f"--config.file={tmp_path / 'alertmanager.yml'}",
                                  f"--storage.path={tmp_path / 'am-data'}",
                                  f"--web.listen-address=127.0.0.1:{am_port}",
                                  "--cluster.listen-address="], am_port),
                ("prometheus", [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                                f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                                f"--web.listen-address=127.0.0.1:{prom_port}"], prom_port)):
            log = tmp_path / f"{name}.log"
            with open(log, "w") as out:
                procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT))
            _wait_http(f"http://127.0.0.1:{port}/-/ready", procs[-1], log)
        yield f"http://127.0.0.1:{prom_port}"
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=30)


def _prom(base: str, path: str) -> dict:
    with urllib.request.urlopen(f"{base}{path}", timeout=5) as r:
        return json.loads(r.read())["data"]


def _have_prometheus() -> bool:
    """Whether Prometheus and Alertmanager are installed (required under
    LLMOPS_REQUIRE_PROMETHEUS=1, where their absence fails the test)."""
    names = ("prometheus", "amtool")
    if all(shutil.which(n) for n in names) and (shutil.which("prometheus-alertmanager")
                                               or shutil.which("alertmanager")):
        return True
    if os.environ.get("LLMOPS_REQUIRE_PROMETHEUS") == "1":
        pytest.fail("prometheus / alertmanager not installed (apt-get install prometheus "
                    "prometheus-alertmanager)")
    return False


def _relaxed_latency(run: Path, tmp_path: Path) -> Path:
    """A run folder for `python -m llmops.monitor` with the chain's monitor stage output, its
    latency threshold raised to 30 s: on a busy 2-core CI machine the served GGUF answered with
    a p95 of 2.1-6.1 s (over the 2 s floor). The test is about the quality figures and their
    alerts; test_stage_writes_baseline_probes_and_rules checks the latency threshold as made."""
    folder = tmp_path / "watched" / "stages" / "monitor"
    shutil.copytree(run / "stages" / "monitor", folder)
    baseline = json.loads((folder / "baseline.json").read_text())
    assert baseline["latency"]["threshold_s"] >= 2.0, baseline["latency"]
    baseline["latency"]["threshold_s"] = 30.0
    (folder / "baseline.json").chmod(0o644)  # the store's copy is read-only
    (folder / "baseline.json").write_text(json.dumps(baseline))
    return tmp_path / "watched"


def _quick_rules(monitor_dir: Path, tmp_path: Path) -> Path:
    """The stage's alert_rules.yml with every `for:` at 0s (the test cannot wait 15 minutes).

    The latency rule's `for: 5m` is what keeps a moment of load from paging in production; at 0s,
    two slow probes of 40 on a busy 2-core CI machine put the p95 over its 2 s (seen in CI: 2.12 s
    for the tuned model). So its threshold is raised to 30 s here: the test is about the quality
    alerts, and test_stage_writes_baseline_probes_and_rules checks the latency rule as generated."""
    rules = yaml.safe_load((monitor_dir / "alert_rules.yml").read_text())
    for rule in rules["groups"][0]["rules"]:
        rule["for"] = "0s"
        if rule["alert"] == "LlmopsLatencyP95High":
            head, _, threshold = rule["expr"].rpartition(" > ")
            assert float(threshold) > 0, rule["expr"]
            rule["expr"] = f"{head} > 30"
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    return tmp_path / "rules.yml"


def _wait_scraped(prom: str, proc: subprocess.Popen, metric: str, value: float) -> None:
    deadline = time.monotonic() + 120
    query = f"/api/v1/query?query={metric}"
    while True:
        result = _prom(prom, query)["result"]
        if result and float(result[0]["value"][1]) == value:
            return
        assert proc.poll() is None and time.monotonic() < deadline, (result, proc.poll())
        time.sleep(0.2)


def _wait_evaluated(prom: str, proc: subprocess.Popen, metric: str) -> None:
    """Waits until Prometheus has evaluated every rule group after the scrape that gave `metric`
    its latest sample (an alert with `for: 0s` fires on that evaluation if it fires at all)."""
    query = f"/api/v1/query?query=timestamp({metric})"
    scraped = float(_prom(prom, query)["result"][0]["value"][1])
    deadline = time.monotonic() + 120
    while True:
        groups = _prom(prom, "/api/v1/rules")["groups"]
        # RFC 3339 with nanoseconds: Python reads microseconds
        done = [datetime.fromisoformat(re.sub(r"(\.\d{6})\d*", r"\1", g["lastEvaluation"])
                                       .replace("Z", "+00:00")).timestamp() for g in groups]
        if done and min(done) > scraped:
            return
        assert proc.poll() is None and time.monotonic() < deadline, (groups, proc.poll())
        time.sleep(0.2)


def _wait_file(path: Path, proc: subprocess.Popen, newer_than: Path | None = None) -> None:
    """Waits until the monitor wrote its report (then SIGTERM only ends its serving)."""
    deadline = time.monotonic() + 600
    while not (path.is_file() and (newer_than is None
                                   or path.stat().st_mtime_ns > newer_than.stat().st_mtime_ns)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.poll()
        time.sleep(0.2)


def _wait_paged(received: list[dict], proc: subprocess.Popen, tmp_path: Path) -> None:
    deadline = time.monotonic() + 600
    while not any(a["labels"]["alertname"] == "LlmopsAccuracyBelowBaseline"
                  for body in received for a in body["alerts"]):
        assert proc.poll() is None and time.monotonic() < deadline, \
            (proc.poll(), (tmp_path / "prometheus.log").read_text()[-2000:])
        time.sleep(0.5)


def _assert_accuracy_page(received: list[dict]) -> None:
    alert = next(a for body in received for a in body["alerts"]
                 if a["labels"]["alertname"] == "LlmopsAccuracyBelowBaseline")
    assert alert["status"] == "firing" and alert["labels"]["severity"] == "page"
    assert alert["labels"]["figure"] == "accuracy" and alert["labels"]["model"] == "llmops-tiny"
    assert "below its evaluated baseline" in alert["annotations"]["summary"]


# Where the end-to-end test runs (the gguf extra is set up, or required: CI), it makes the same
# checks with the same Prometheus and Alertmanager on the served tuned and base models; this test
# makes them on logged traffic where it does not.
E2E_RUNS = os.environ.get("LLMOPS_REQUIRE_GGUF") == "1" or gguf_ready()


@pytest.mark.skipif(E2E_RUNS, reason="test_monitor_is_quiet_on_the_tuned_model_and_pages_on_the_"
                    "base_model makes these checks on served models")
def test_prometheus_scrapes_the_monitor_and_alertmanager_pages_the_webhook_on_a_drop(
        stage_inputs, tmp_path, stage_params):
    """Real Prometheus with the stage's alert_rules.yml (`for:` shortened to 0s here) scrapes
    `python -m llmops.monitor --serve-seconds`; real Alertmanager with the generated config sends
    to a webhook on 127.0.0.1: a good log fires nothing (exit 0), a bad one pages with the
    accuracy alert (exit EXIT_ALERT)."""
    run_dir = _fake_run(stage_inputs, tmp_path, stage_params)
    probes = [json.loads(x) for x in
              (run_dir / "stages" / "monitor" / "probes.jsonl").read_text().splitlines()]
    rules = _quick_rules(run_dir / "stages" / "monitor", tmp_path)
    port = _free_port()

    def monitor(name: str, wrong: bool) -> subprocess.Popen:
        # Serves its final figures until the test stops it (SIGTERM: the monitor's exit code).
        log = _log(tmp_path / f"{name}.jsonl", probes, wrong)
        return subprocess.Popen(
            [sys.executable, "-m", "llmops.monitor", str(run_dir), "--log", str(log),
             "--metrics-port", str(port), "--serve-seconds", "300",
             "--report", str(tmp_path / f"{name}_report.json")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"})

    with _webhook() as (hook, received), \
            _prometheus_stack(tmp_path, rules, f"127.0.0.1:{port}", hook) as prom:
        good = monitor("good", False)
        try:
            _wait_scraped(prom, good, "llmops_monitor_accuracy", 1.0)
            _wait_evaluated(prom, good, "llmops_monitor_accuracy")
            assert _prom(prom, "/api/v1/alerts")["alerts"] == [] and received == []
        finally:
            good.terminate()
            good.communicate(timeout=120)
        assert good.returncode == 0

        bad = monitor("bad", True)
        try:
            _wait_paged(received, bad, tmp_path)
        finally:
            bad.terminate()
            bad.communicate(timeout=60)
        assert bad.returncode == EXIT_ALERT
    _assert_accuracy_page(received)
