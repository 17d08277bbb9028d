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
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
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
    _, local = compose_plan(["monitor=default", "dry_run=true"])
    assert "monitor" not in [s.name for s in local.stages]  # deploy=local: no endpoint to watch


@pytest.mark.parametrize(("override", "key", "message"), [
    ("monitor.for.accuracy=5x", "monitor.for.accuracy", "should match pattern"),
    ("monitor.significance=0.7", "monitor.significance", "must be < 0.5 (got 0.7)"),
    ("monitor.thresholds.latency_factor=1", "monitor.thresholds.latency_factor",
     "must be > 1.0 (got 1)"),
    ("+monitor.probe=3", "monitor.probe", ""),
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
    """Converts the run's tiny *base* model with the gguf stage (the same params as the run)."""
    from llmops.core.plan import Plan
    from llmops.stages import gguf

    params = Plan.read(run / "plan.json").stage("gguf").params
    export = tmp_path / "base_export"
    export.mkdir()
    (export / "merged").symlink_to((run / "stages" / "base").resolve(), target_is_directory=True)
    out = tmp_path / "base_gguf"
    out.mkdir()
    report = gguf.run(params, {"export": export, "data": run / "stages" / "data",
                               "base": run / "stages" / "base"}, out, _ctx(tmp_path))
    return out / report["files"][params["quantization"][0]]["path"]


@needs_gguf
@pytest.mark.slow
def test_monitor_is_quiet_on_the_tuned_model_and_pages_on_the_base_model(chain_run, tmp_path):
    """The README's commands: the pipeline with monitor=default (and release=default: the chain
    run shared with the release tests), then the monitor against a served tuned model (no alert,
    metrics over HTTP on 127.0.0.1) and a served base model (alerts)."""
    from prometheus_client.parser import text_string_to_metric_families

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    run = chain_run["run"]
    baseline = json.loads((run / "baseline.json").read_text())
    assert (run / "stages" / "monitor" / "alert_rules.yml").is_file()
    assert baseline["figures"]["accuracy"]["n"] > 0 and baseline["latency"]["n"] == 3
    greport = json.loads((run / "gguf_report.json").read_text())
    tuned = run / "stages" / "gguf" / greport["files"]["f16"]["path"]

    port = _free_port()
    with _serve(tuned, tmp_path / "tuned.log") as url:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmops.monitor", str(run), "--endpoint", url, "--probes",
             "40", "--metrics-port", str(port), "--serve-seconds", "10"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        text = _metrics_while_running(proc, port, 40)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {"llmops_monitor_accuracy", "llmops_monitor_json_validity",
            "llmops_monitor_request_latency_seconds", "llmops_monitor_probes"} <= set(families)
    assert f"metrics at http://127.0.0.1:{port}/metrics" in out
    report = json.loads((run / "monitor_report.json").read_text())
    assert report["probes"] == 40 and report["alerts_firing"] == []

    base = _base_gguf(run, tmp_path)
    with _serve(base, tmp_path / "base.log") as url:
        r = _monitor(str(run), "--endpoint", url, "--probes", "40", "--no-metrics", timeout=900)
    assert r.returncode == EXIT_ALERT, r.stdout + r.stderr
    report = json.loads((run / "monitor_report.json").read_text())
    acc = report["figures"]["accuracy"]
    assert acc["firing"] and acc["significant"] and acc["now"] < acc["threshold"]
    assert "LlmopsAccuracyBelowBaseline" in report["alerts_firing"]
