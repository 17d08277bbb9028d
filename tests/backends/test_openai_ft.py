"""train.backend=openai against a local stand-in of OpenAI's API (tests/openai_standin.py).

One module run carries the chain and the interruption: the stand-in holds the job in
`running`, the run is interrupted (SIGINT, as Ctrl-C) while it follows the job, the job is let
go, and the same command is rerun: it follows the same job (one job on the stand-in) and runs
through eval, where the fine-tuned model (trained for real by the stand-in, 20 LoRA steps on the
uploaded rows) beats the base. The base is the default run's tiny model (its store entry is
reused: nothing is pre-trained here), as both "OpenAI's" base model and the data stage's
tokenizer; the data stage runs once, in the test process, before the first run.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import _compile

FAKE_KEY = "sk-standin-7f3a9c1e5b2d4a6f8e0c"
# A small chain on the default tiny base: 200 rows (20 test rows), the gates made reachable (the
# chain goes on to deploy, monitor and release; deploy=local's smoke test: deploy.openai's 3).
SMALL = ["data.n_examples=200", "eval.gates.accuracy.threshold=0", "eval.gates.format.threshold=0",
         "eval.gates.safety.threshold=0", "eval.gates.no_regression.tolerance=1",
         "monitor=default", "release=default", "usecase=none",
         "progress=false"]
# The stand-in's training: enough LoRA steps that the fine-tuned model answers clearly better than
# the base on the 20 test rows (exact match ~0.7 against 0.5 over train.seed=0..5 at 20 steps).
STANDIN_STEPS = 20
OPENAI = ["train.backend=openai", "train.openai.upload_consent=true",
          "train.openai.poll_seconds=0.2", "train.openai.suffix=chain"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LLMOPS_STORE", "OPENAI_BASE_URL")}
    return {**env, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
            **extra}


@pytest.fixture(scope="module")
def openai_chain(tmp_path_factory, default_run, seed_store, stage_params) -> dict[str, Any]:
    from conftest import SEED_ONLY
    from openai_standin import OpenAIStandIn

    from llmops.runner.run import run_plan
    from llmops.store.cas import Store

    root = tmp_path_factory.mktemp("openai_chain")
    store = seed_store(root / "store", *SMALL, stages=("base",), source=default_run["store"])
    # The data stage runs here, in the test process (which loads transformers for the stand-in
    # anyway), into the chain's store: the first run finds it cached, and its stage process
    # runs only the sft stage that creates the job.
    _, data_plan = _compile([*SMALL, *SEED_ONLY, "monitor=none", "release=none",
                             f"store_dir={store}"])
    run_plan(data_plan, root / "data_run", stage_process=False)
    _, plan = _compile(SMALL)
    base = Store(store).lookup(plan.stage("base"))
    (root / "standin").mkdir()
    # The stand-in's own training: llmops's hf backend, STANDIN_STEPS LoRA steps.
    standin = OpenAIStandIn(root / "standin", base,
                            stage_params("sft", "train.backend=hf",
                                         f"train.max_steps={STANDIN_STEPS}"),
                            hold=True)
    args = [sys.executable, "-m", "llmops", *SMALL, *OPENAI,
            f"train.openai.base_url={standin.base_url}", f"store_dir={store}"]
    env = _env(OPENAI_API_KEY=FAKE_KEY)
    first = subprocess.Popen([*args, f"hydra.run.dir={root / 'first'}"], cwd=root, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    deadline = time.monotonic() + 600
    # The run follows the job once it asks the stand-in for it (GET .../jobs/{id}).
    while not any(list(standin.retrieved.values())):
        assert first.poll() is None, first.stdout.read()[-4000:]
        assert time.monotonic() < deadline, "the run never followed a job"
        time.sleep(0.2)
    assert len(standin.jobs) == 1  # held in progress until release()
    os.killpg(first.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
    first_out, _ = first.communicate(timeout=300)
    standin.release()
    second = subprocess.run([*args, f"hydra.run.dir={root / 'second'}"], cwd=root, env=env,
                            capture_output=True, text=True, timeout=900)
    yield {"root": root, "standin": standin, "first": first, "first_out": first_out,
           "second": second, "run": root / "second"}
    standin.close()


def _report(run: Path, name: str) -> dict[str, Any]:
    return json.loads(next(run.rglob(name)).read_text(encoding="utf-8")) \
        if any(run.rglob(name)) else {}


def _stage_dir(chain: dict[str, Any], stage: str) -> Path:
    manifest = json.loads((chain["run"] / "manifest.json").read_text(encoding="utf-8"))
    return Path(manifest["stages"][stage]["path"])


def test_interrupted_run_follows_the_same_job_on_rerun(openai_chain):
    c = openai_chain
    assert c["first"].returncode != 0, c["first_out"][-3000:]
    assert c["second"].returncode == 0, c["second"].stdout[-2000:] + c["second"].stderr[-4000:]
    jobs = list(c["standin"].jobs.values())
    assert len(jobs) == 1 and jobs[0]["status"] == "succeeded"
    assert len(c["standin"].files) == 2  # train + validation, uploaded once
    assert "following OpenAI job " + jobs[0]["id"] in c["second"].stdout + c["second"].stderr
    sft = json.loads((_stage_dir(c, "sft") / "training_report.json").read_text())
    assert sft["job_id"] == jobs[0]["id"] and sft["resumed_job"] is True
    assert sft["fine_tuned_model"] == jobs[0]["fine_tuned_model"]
    assert sft["fine_tuned_model"].startswith("ft:gpt-4o-mini-2024-07-18:standin:chain:")
    assert sft["trained_tokens"] == jobs[0]["trained_tokens"] > 0
    assert sft["cost_usd"] == pytest.approx(sft["trained_tokens"] * 3.0 / 1e6, abs=1e-4)
    assert jobs[0]["metadata"]["llmops_token"]
    assert jobs[0]["hyperparameters"]["n_epochs"] == "auto"


def test_eval_scores_base_and_fine_tuned_ids_through_the_api(openai_chain):
    c = openai_chain
    assert c["second"].returncode == 0, c["second"].stderr[-4000:]
    report = json.loads((_stage_dir(c, "eval") / "eval_report.json").read_text())
    job = next(iter(c["standin"].jobs.values()))
    assert report["models"] == {"base": "gpt-4o-mini-2024-07-18",
                                "tuned": job["fine_tuned_model"]}
    assert report["n"] == 20 and report["answer_syntax"] == "hermes"
    assert report["base"]["loss"] is None  # the API gives no held-out loss
    assert report["tuned"]["exact_match"] > report["base"]["exact_match"], report["deltas"]
    assert {g["name"] for g in report["gates"]} >= {"accuracy", "format"}
    manifest = json.loads((c["run"] / "manifest.json").read_text())
    assert "export" not in manifest["stages"] and "gguf" not in manifest["stages"]
    compute = json.loads((_stage_dir(c, "compute") / "compute_plan.json").read_text())
    assert compute["backend"] == "openai" and compute["cost_usd"] > 0
    assert "total_gb" not in compute and compute["upload"]["train_rows"] == 160


def test_deploy_monitor_and_release_point_at_the_fine_tuned_model(openai_chain):
    c = openai_chain
    assert c["second"].returncode == 0, c["second"].stderr[-4000:]
    model = next(iter(c["standin"].jobs.values()))["fine_tuned_model"]
    integration = json.loads((_stage_dir(c, "deploy") / "integration_config.json").read_text())
    assert integration["model"] == model and integration["base_url"] == c["standin"].base_url
    assert integration["target"] == "openai_api" and integration["tools"]
    smoke = json.loads((_stage_dir(c, "deploy") / "smoke_test.json").read_text())
    assert smoke["passed"] and smoke["prompts"] == 3 and smoke["model"] == model
    baseline = json.loads((_stage_dir(c, "monitor") / "baseline.json").read_text())
    assert baseline["model"] == model and baseline["call_syntax"] == "hermes"
    card = (_stage_dir(c, "release") / "release" / "model_card.md").read_text()
    assert f'model="{model}"' in card or json.dumps(model) in card
    assert "fine_tuned_model " + model in card


def test_the_api_key_reaches_no_file_and_no_output(openai_chain):
    c = openai_chain
    out = c["first_out"] + c["second"].stdout + c["second"].stderr
    assert FAKE_KEY not in out
    written = [p for p in c["root"].rglob("*") if p.is_file() and "standin" not in p.parts]
    assert any(p.name == "plan.json" for p in written)
    assert [str(p) for p in written if FAKE_KEY.encode() in p.read_bytes()] == []


def _bad_rows() -> list[dict[str, Any]]:
    from llmops.data import task_api

    rows = task_api.generate(24, seed=5)
    rows[3]["messages"][0]["weight"] = 1  # weight on a system message
    rows[7]["messages"][-1]["tool_calls"] = [{"id": "c1", "type": "function",
                                              "function": {"name": "x", "arguments": {}}}]
    return rows


def test_bad_data_is_refused_before_anything_is_uploaded(tmp_path, stage_params, monkeypatch):
    from openai_standin import OpenAIStandIn

    from llmops.backends.openai_ft import BACKEND
    from llmops.core.context import StageContext
    from llmops.errors import EXIT_DATA_REJECTED, DataRejected
    from llmops.files import write_jsonl

    write_jsonl(tmp_path / "train.jsonl", _bad_rows())
    (tmp_path / "s").mkdir()
    standin = OpenAIStandIn(tmp_path / "s", tmp_path / "no-model", {}, hold=True)  # trains none
    try:
        params = stage_params("sft", "train.backend=openai", "train.openai.upload_consent=true",
                              f"train.openai.base_url={standin.base_url}", "data.on_error=fail")
        monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
        ctx = StageContext(run_dir=tmp_path, show_progress=False, logger=logging.getLogger("t"))
        with pytest.raises(DataRejected) as e:
            BACKEND.train_sft(params, tmp_path, "", tmp_path / "out", ctx)
        assert e.value.exit_code == EXIT_DATA_REJECTED == 5
        msg = str(e.value)
        assert "train.jsonl line 4 (row 3)" in msg and "rule 'weight'" in msg
        assert "train.jsonl line 8 (row 7)" in msg and "rule 'tool_calls'" in msg
        assert "JSON text" in msg and "nothing was uploaded" in msg
        assert standin.files == {} and standin.jobs == {}
    finally:
        standin.close()


def test_failed_job_fails_the_stage_with_the_apis_message(tmp_path, stage_params, monkeypatch):
    from openai_standin import OpenAIStandIn

    from llmops.backends.openai_ft import BACKEND, JOB_FILE
    from llmops.core.context import StageContext
    from llmops.data import task_api
    from llmops.errors import StageError
    from llmops.files import write_jsonl

    write_jsonl(tmp_path / "train.jsonl", task_api.generate(12, seed=1))
    (tmp_path / "s").mkdir()
    standin = OpenAIStandIn(tmp_path / "s", tmp_path / "no-model", {},
                            fail_with="File has 3 bad lines")
    try:
        params = stage_params("sft", "train.backend=openai", "train.openai.upload_consent=true",
                              f"train.openai.base_url={standin.base_url}",
                              "train.openai.poll_seconds=0.1")
        monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
        ctx = StageContext(run_dir=tmp_path, show_progress=False, logger=logging.getLogger("t"))
        with pytest.raises(StageError, match="failed: File has 3 bad lines"):
            BACKEND.train_sft(params, tmp_path, "", tmp_path / "out", ctx)
        state = json.loads((tmp_path / "out" / JOB_FILE).read_text())
        assert state["job_id"] in standin.jobs and len(standin.jobs) == 1
        assert FAKE_KEY not in (tmp_path / "out" / JOB_FILE).read_text()
    finally:
        standin.close()


# ---- compile time: consent, cost cap, the dry run (no training, no server) ----


def test_without_consent_a_run_exits_2_naming_the_key(tmp_path):
    r = subprocess.run([sys.executable, "-m", "llmops", "train.backend=openai"], cwd=tmp_path,
                       env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "train.openai.upload_consent: train.backend=openai uploads 960 train + 120 " \
           "validation rows to OpenAI" in r.stderr
    assert "train.openai.upload_consent=true" in r.stderr
    assert not list(tmp_path.rglob("plan.json"))


def test_a_plan_over_the_cost_cap_exits_2_with_the_estimate(compose_plan):
    from llmops.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        compose_plan(["train.backend=openai", "train.openai.upload_consent=true",
                      "train.openai.max_cost_usd=0.5"])
    (p,) = [p for p in e.value.problems if p.key == "train.openai.max_cost_usd"]
    assert "the job is estimated at $" in p.message and "x 3 epochs x $3/1M" in p.message
    assert "above the cap $0.50" in p.message and "tokens estimated" in p.message
    assert e.value.exit_code == 2


def test_dry_run_says_what_would_be_uploaded(compose_plan):
    cfg, plan = compose_plan(["train.backend=openai", "dry_run=true"])
    names = [s.name for s in plan.stages]
    assert "export" not in names and "gguf" not in names
    sft = plan.stage("sft")
    assert "upload train.jsonl + val.jsonl (960 + 120 rows)" in sft.summary
    assert "NOT consented" in sft.summary and "of the $5 cap" in sft.summary
    assert sft.params["openai"]["model"] == "gpt-4o-mini-2024-07-18"
    assert plan.stage("eval_base").params["api"]["model"] == "gpt-4o-mini-2024-07-18"
    from llmops.stages.compute import plan as compute_plan

    report = compute_plan(plan.stage("compute").params)
    assert report["backend"] == "openai" and report["within_cap"]
    assert report["upload"]["files"] == ["train.jsonl", "val.jsonl"]


@pytest.mark.parametrize(("override", "key"), [
    ("train=sft_dpo", "train.backend"), ("merge=linear", "merge"),
    ("deploy=openai", "deploy.target")])
def test_what_the_backend_cannot_do_is_refused_at_compile_time(compose_plan, override, key):
    from llmops.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        compose_plan(["train.backend=openai", "train.openai.upload_consent=true", override])
    assert key in {p.key for p in e.value.problems}


def test_decide_names_the_api_between_100_and_1000_examples():
    from llmops.config.hydra.groups import option_files
    from llmops.planning.decide import assess
    from llmops.planning.openai_ft import way

    assert [way(n)["way"] for n in (99, 100, 1000, 1001)] == \
        ["few-shot", "openai", "openai", "lora"]
    _, plan = _compile(["usecase.examples_available=400", "train.backend=openai",
                        "hardware=a100_40g", "dry_run=true"])
    p = plan.stage("decide").params
    report = assess(p["usecase"], {k: p[k] for k in ("model", "train", "hardware")},
                    catalog=option_files(), api=p["api"])
    method = report["method"]
    assert method["way"]["backend"] == "openai"
    assert any("train.backend=openai" in w for w in method["why"])
    assert method["api_vs_self_host"].startswith(f"API training ~${p['api']['cost_usd']:,.2f} "
                                                 "vs self-hosted ~$")
