"""The release stage and group: config rules (exit 2), the plan, and a real release of the tiny
default (`python -m llmops deploy=openai release=default`): model card, bundle, SHA256SUMS.

The config tests need no torch. The end-to-end tests run the README's command in a subprocess
(one full run shared by the module, its store reused by the failed-gate run) and need the gguf
extra, like tests/serving/test_deploy.py's.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from fixtures_model import needs_gguf

from llmops.errors import ConfigError


def _problems(compose_plan, overrides: list[str]) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        compose_plan(overrides)
    return {p.key: p.message for p in info.value.problems}


# -- config: version, formats, license, name, what the plan must hold (no torch) -----------------

@pytest.mark.parametrize("version", ["1.0", "v1.0.0", "1.0.0.0", "01.2.3", "banana"])
def test_a_version_that_is_not_semver_is_refused_with_the_fix(compose_plan, version):
    problems = _problems(compose_plan, ["release=default", f"release.version={version}"])
    assert problems["release.version"].startswith(
        "must be a semantic version MAJOR.MINOR.PATCH[-PRE][+BUILD], e.g. 1.0.0 or 1.1.0-rc.1")


@pytest.mark.parametrize("version", ["0.1.0", "2.10.3", "1.0.0-rc.1", "1.2.3-beta+exp.sha.5114f85"])
def test_semantic_versions_are_accepted(compose_plan, version):
    cfg, plan = compose_plan(["release=default", f"release.version={version}"])
    assert plan.stage("release").params["version"] == version


def test_a_format_the_plan_does_not_produce_is_refused_naming_the_fix(compose_plan):
    problems = _problems(compose_plan, ["release=default", "release.formats=[gguf]"])
    assert problems["release.formats"] == (
        "'gguf' is not produced by this plan: deploy.gguf.quantization is empty, so no GGUF is "
        "written. Set deploy.gguf.quantization=[f16] (deploy=openai and deploy=ollama set it), or "
        "drop gguf from release.formats.")
    problems = _problems(compose_plan, ["release=default", "release.formats=[adapter]",
                                        "lora=none", "deploy.formats=[merged]"])
    assert problems["release.formats"].startswith(
        "'adapter' is not produced by this plan: lora=none trains no adapter.")
    problems = _problems(compose_plan, ["release=default", "release.formats=[merged]",
                                        "deploy.formats=[adapter]"])
    assert problems["release.formats"].startswith(
        "'merged' is not produced by this plan: deploy.formats=['adapter'] does not export it.")


def test_a_release_needs_eval_and_an_export(compose_plan):
    problems = _problems(compose_plan, ["release=default", "eval=none"])
    assert problems["release.enabled"].startswith(
        "a release is made only of a model that passed its gates, but eval is off.")
    problems = _problems(compose_plan, ["release=default", "deploy=none"])
    assert problems["release.enabled"].startswith(
        "a release packages the exported model, but deploy=none exports none.")


def test_license_and_name_are_checked(compose_plan):
    problems = _problems(compose_plan, ["release=default", "release.license=apache",
                                        "release.name=my/model"])
    assert problems["release.license"].startswith("must be one SPDX license id")
    assert "(got 'apache')" in problems["release.license"]
    assert problems["release.name"].startswith("must be a file name of letters, digits")
    _, plan = compose_plan(["release=default", "release.license=MIT", "release.name=tasks-bot"])
    params = plan.stage("release").params
    assert params["license"] == "mit" and params["name"] == "tasks-bot"
    _, plan = compose_plan(["release=default", "release.license=llama3.1"])
    assert plan.stage("release").params["license"] == "llama3.1"


def test_release_is_off_by_default_and_last_when_on(compose_plan):
    _, plan = compose_plan([])
    assert "release" not in [s.name for s in plan.stages]
    _, plan = compose_plan(["release=default", "deploy=openai", "dry_run=true"])
    release = plan.stages[-1]
    assert release.name == "release"
    assert release.params["formats"] == ["adapter", "merged", "gguf"]  # auto: what is exported
    assert release.params["serve_quantization"] == "f16"
    assert {"eval", "export", "sft", "gguf", "deploy", "decide", "compute", "data"} <= set(
        release.needs)
    _, local = compose_plan(["release=default"])
    assert local.stage("release").params["formats"] == ["adapter", "merged"]
    assert "gguf" not in local.stage("release").needs


def test_a_bad_release_config_exits_2_and_writes_nothing(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    for bad, says in (("release.version=1.0", "release.version: must be a semantic version"),
                      ("release.formats=[gguf]",
                       "release.formats: 'gguf' is not produced by this plan")):
        r = subprocess.run([sys.executable, "-m", "llmops", "release=default", bad],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr[-2000:]
        assert says in r.stderr + r.stdout
        assert list(tmp_path.iterdir()) == []


# -- the release stage on a real run of the tiny default -----------------------------------------

@pytest.fixture(scope="module")
def released(chain_run) -> dict[str, Path]:
    """The folders of `python -m llmops deploy=openai monitor=default release=default` (run once
    per session, shared with the monitor tests)."""
    stage = (chain_run["run"] / "stages" / "release").resolve()
    return {**chain_run, "stage": stage, "release": stage / "release"}


@needs_gguf
@pytest.mark.slow
def test_the_bundle_unpacks_and_its_sha256sums_verify(released, tmp_path):
    report = json.loads((released["run"] / "release_report.json").read_text())
    bundle = released["stage"] / report["bundle"]["path"]
    assert bundle.name == "llmops-tiny-0.1.0.tar.gz"
    assert hashlib.sha256(bundle.read_bytes()).hexdigest() == report["bundle"]["sha256"]
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
        tar.extractall(tmp_path, filter="data")
    assert names == sorted(names) and names[0] == "llmops-tiny-0.1.0"  # deterministic order
    top = tmp_path / "llmops-tiny-0.1.0"
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=top, capture_output=True,
                           text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    lines = check.stdout.splitlines()
    files = sorted(p.relative_to(top).as_posix() for p in top.rglob("*") if p.is_file())
    assert len(lines) == len(files) - 1 == report["sha256sums"]  # every file but SHA256SUMS
    assert all(line.endswith(": OK") for line in lines)
    for want in ("README.md", "model_card.md", "Modelfile", "integration_config.json",
                 "manifest.json", "reports/eval_report.json", "reports/decision_report.json",
                 "reports/compute_plan.json", "adapter/adapter_config.json",
                 "merged/config.json", "gguf/model-f16.gguf"):
        assert want in files, want
    # A changed byte is caught: the sums check content, not names.
    with open(top / "merged" / "config.json", "a") as f:
        f.write(" ")
    bad = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=top, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode != 0 and "merged/config.json: FAILED" in bad.stdout


@needs_gguf
@pytest.mark.slow
def test_the_model_card_loads_and_carries_the_eval_data_and_value(released):
    from huggingface_hub import ModelCard

    rel, run = released["release"], released["run"]
    card = ModelCard.load(rel / "model_card.md")
    assert (rel / "README.md").read_text() == (rel / "model_card.md").read_text()
    data = card.data
    evaluation = json.loads((run / "eval_report.json").read_text())
    test_sha = hashlib.sha256((run / "stages" / "data" / "test.jsonl").read_bytes()).hexdigest()
    results = {r.metric_type: r for r in data.eval_results}
    assert results["exact_match"].metric_value == pytest.approx(
        evaluation["tuned"]["exact_match"])
    assert results["json_valid_rate"].metric_value == pytest.approx(
        evaluation["tuned"]["json_valid_rate"])
    assert "per_tool" not in results and "counts" not in results
    first = results["exact_match"]
    assert (first.task_type, first.dataset_type, first.dataset_split) == (
        "text-generation", "llmops/task_api", "test")
    assert first.dataset_revision == f"sha256:{test_sha}"
    assert data.model_name == "llmops-tiny" and data.license == "apache-2.0"
    assert data.base_model is None  # the tiny model is not on the Hub: the body describes it
    assert {"llmops", "sft", "lora", "peft", "gguf"} <= set(data.tags)
    assert data.to_dict()["dataset_hashes"]["test.jsonl"] == f"sha256:{test_sha}"
    # The same metadata survives a round trip through the Hub's own parser and writer.
    again = ModelCard(str(card))
    assert len(again.data.eval_results) == len(data.eval_results)
    text = card.text
    decision = json.loads((run / "decision_report.json").read_text())
    roi = decision["roi"]
    assert "## Intended use" in text and "**task_api** (productivity" in text
    assert "## Limits" in text and "tiny demo model" in text
    for gate in evaluation["gates"]:
        if not gate["skipped"]:
            assert f"| {gate['name']} | {gate['rule']} |" in text and "passed |" in text
    assert "## Value" in text and f"| net_monthly_usd | {roi['net_monthly_usd']:.4g} |" in text
    assert f"| cheaper | {roi['break_even']['cheaper']} |" in text
    assert "ollama create llmops-tiny -f Modelfile" in text
    assert "python -m llama_cpp.server --model gguf/model-f16.gguf" in text
    assert 'AutoModelForCausalLM.from_pretrained("merged")' in text


@needs_gguf
@pytest.mark.slow
def test_the_release_modelfile_points_at_the_bundled_gguf(released):
    rel = released["release"]
    text = (rel / "Modelfile").read_text()
    assert text.splitlines()[0] == "FROM ./gguf/model-f16.gguf"
    deploy = json.loads((released["run"] / "deploy_report.json").read_text())
    integration = json.loads((rel / "integration_config.json").read_text())
    assert integration["model"] == deploy["model"] == "llmops-tiny"
    manifest = json.loads((rel / "manifest.json").read_text())
    assert manifest["stages"]["deploy"]["status"] == "ran"
    assert manifest["stages"]["release"]["status"] == "running"  # snapshot taken as it ran


@needs_gguf
@pytest.mark.slow
def test_a_failed_gate_produces_no_release(released, tmp_path, compose_plan):
    """eval.enforce=false lets the plan go on past a failed gate; the release still refuses.

    The plan `python -m llmops release=default eval.enforce=false ...` compiles, run by the
    runner in this process (eval and export rerun here, the rest is cached): what the release
    stage refuses is the test, not the command line (test_cli and the chain run that)."""
    from llmops.errors import EXIT_GATE_FAILED, LlmopsError
    from llmops.runner.run import run_plan

    store = released["store"]
    before = sorted((store / "release").iterdir())
    impossible = ["eval.gates.format.direction=max", "eval.gates.format.threshold=0.0"]
    _, plan = compose_plan(["release=default", "eval.enforce=false", *impossible,
                            f"store_dir={store}"])
    run = tmp_path / "run"
    with pytest.raises(LlmopsError) as e:
        run_plan(plan, run, stage_process=False)
    assert e.value.exit_code == EXIT_GATE_FAILED == 3
    assert "release: refusing to release a model that failed its gates (format)" in str(e.value)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["export"]["status"] == "ran"
    assert manifest["stages"]["release"]["status"] == "failed"
    assert not (run / "stages" / "release").exists()
    assert not (run / "release_report.json").exists()
    assert sorted((store / "release").iterdir()) == before  # nothing new in the store
    leftovers = [p for p in store.rglob("*") if p.name.endswith(".tar.gz")
                 or p.name == "model_card.md"]
    assert all(p.is_relative_to(released["stage"]) for p in leftovers), leftovers


@needs_gguf
@pytest.mark.slow
def test_the_monitor_files_join_the_release_when_the_monitor_stage_ran(released):
    """The chain's monitor stage ran before release: its baseline and alert rules are bundled,
    byte for byte, listed in SHA256SUMS and named in the card."""
    monitor = (released["run"] / "stages" / "monitor").resolve()
    report = json.loads((released["stage"] / "release_report.json").read_text())
    assert report["monitor"] == ["monitor/baseline.json", "monitor/alert_rules.yml"]
    for name in ("baseline.json", "alert_rules.yml"):
        source = next(monitor.rglob(name))
        assert (released["release"] / "monitor" / name).read_bytes() == source.read_bytes()
    sums = (released["release"] / "SHA256SUMS").read_text()
    assert "  monitor/baseline.json\n" in sums and "  monitor/alert_rules.yml\n" in sums
    card = (released["release"] / "README.md").read_text()
    assert "`monitor/alert_rules.yml` (monitor stage)" in card
    with tarfile.open(released["stage"] / report["bundle"]["path"]) as tar:
        assert "llmops-tiny-0.1.0/monitor/alert_rules.yml" in tar.getnames()
