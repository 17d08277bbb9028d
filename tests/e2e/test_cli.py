"""The commands README.md gives, run exactly as written, in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "transformers", "peft", "trl", "datasets", "wandb", "unsloth")


def llmops(*args: str, cwd: Path, timeout: int = 120,
           python_args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, *python_args, "-m", "llmops", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)


def test_dry_run_prints_the_plan_writes_plan_json_and_imports_no_heavy_library(tmp_path):
    r = llmops("model=qwen3b", "lora=r16", "hardware=t4", "dry_run=true", cwd=tmp_path,
               python_args=("-X", "importtime"))
    assert r.returncode == 0, r.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines()
                if line.startswith("import time:")}
    assert "llmops.cli" in imported and not imported & set(HEAVY)
    assert "llmops plan: model=qwen3b lora=r16 quant=none on t4 [NVIDIA T4]" in r.stdout
    for stage in ("decide", "compute", "data", "sft", "eval_base", "eval", "export"):
        assert f" {stage} " in r.stdout
    assert "compute plan: qwen3b on t4:" in r.stdout and "(fits)" in r.stdout
    plans = list(tmp_path.glob("outputs/runs/*/*/plan.json"))
    assert len(plans) == 1
    plan = json.loads(plans[0].read_text())
    assert [s["kind"] for s in plan["stages"]] == ["decide", "compute", "data", "sft",
                                                   "eval_base", "eval", "export"]
    assert plan["stages"][3]["params"]["lora"]["r"] == 16
    compute = json.loads((plans[0].parent / "compute_plan.json").read_text())
    assert compute["fits"] is True and compute["hardware"] == "t4"
    assert not (tmp_path / "outputs" / "store").exists(), "a dry run runs no stage"


def test_compile_path_imports_no_heavy_library(tmp_path):
    code = (
        "import sys\n"
        "from llmops.cli import preflight, execute\n"
        "from llmops.config.hydra.compose import compose\n"
        "from llmops.runner.run import run_plan\n"
        "preflight(['model=qwen3b', 'lora=r16', 'hardware=t4', 'dry_run=true'])\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print(heavy)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_single_run_gives_the_job_what_hydras_own_app_gives_it(tmp_path):
    """A single run skips Hydra's re-composition; its run folder must match Hydra's app's."""
    args = ["model=qwen3b", "lora=r8", "train.learning_rate=1e-4", "hardware=a100_40g",
            "dry_run=true"]
    fast = llmops(*args, "hydra.run.dir=fastrun", cwd=tmp_path)
    assert fast.returncode == 0, fast.stderr
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    app = subprocess.run([sys.executable, "-c", "from llmops import cli; cli._hydra_app()", *args,
                          "hydra.run.dir=apprun"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert app.returncode == 0, app.stderr
    for name in ("config.yaml", "overrides.yaml", "hydra.yaml"):
        texts = [(tmp_path / run / ".hydra" / name).read_text().replace(run, "RUN")
                 for run in ("fastrun", "apprun")]
        assert texts[0] == texts[1], name
    for run in ("fastrun", "apprun"):
        plan = json.loads((tmp_path / run / "plan.json").read_text())
        assert plan["stages"][3]["params"]["train"]["learning_rate"] == 1e-4
        assert (tmp_path / run / "llmops.log").is_file()


def test_typo_exits_2_naming_the_key_and_writes_nothing(tmp_path):
    r = llmops("lora.rnak=16", cwd=tmp_path)
    assert r.returncode == 2
    assert "Config is invalid (1 problem):" in r.stderr
    assert "lora.rnak: unknown key. Did you mean 'lora.r'?" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "outputs").exists()


def test_bad_values_exit_2_naming_every_key(tmp_path):
    r = llmops("lora.r=0", "train.learning_rate=-1", cwd=tmp_path)
    assert r.returncode == 2
    assert "Config is invalid (2 problems):" in r.stderr
    assert "  - lora.r: must be ≥ 1 (got 0)." in r.stderr
    assert "  - train.learning_rate: must be > 0.0 (got -1)." in r.stderr
    assert not (tmp_path / "outputs").exists()


def test_unknown_option_and_bad_syntax_exit_2(tmp_path):
    r = llmops("lora=r17", "train.epochs=[", cwd=tmp_path)
    assert r.returncode == 2
    assert "  - lora: 'r17' is not an option of this group. Did you mean 'r16'?" in r.stderr
    assert "  - train.epochs: cannot parse override" in r.stderr
    assert "Traceback" not in r.stderr


def test_sweep_points_are_all_checked_before_launch(tmp_path):
    r = llmops("-m", "lora=r8,r16", "train.learning_rate=1e-4,-1", cwd=tmp_path)
    assert r.returncode == 2
    assert "[sweep point: lora=r8 train.learning_rate=-1]" in r.stderr
    assert "[sweep point: lora=r16 train.learning_rate=-1]" in r.stderr
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


def test_default_pipeline_end_to_end(default_run):
    """`python -m llmops` exactly as README writes it: the whole plan offline on the CPU (the
    session's one default run, in a fresh folder and store)."""
    r, tmp_path = default_run["result"], default_run["root"]
    assert r.returncode == 0, r.stderr[-3000:]
    runs = list(tmp_path.glob("outputs/runs/*/*"))
    assert len(runs) == 1
    run = runs[0]
    for name in ("plan.json", "manifest.json", "decision_report.json", "compute_plan.json",
                 "base_report.json", "data_report.json", "training_report.json",
                 "base_eval.json", "eval_report.json", "export_report.json", "loss_curve.png"):
        assert (run / name).is_file(), name
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "succeeded"
    assert {s["status"] for s in manifest["stages"].values()} == {"ran"}
    assert manifest["libraries"]["torch"] and manifest["hardware"]["device"] == "cpu"
    assert set(manifest["data_hashes"]) >= {"train.jsonl", "val.jsonl", "test.jsonl"}

    report = json.loads((run / "eval_report.json").read_text())
    assert set(report) >= {"base", "tuned", "gates", "passed"}
    assert report["passed"] is True
    base, tuned = report["base"]["exact_match"], report["tuned"]["exact_match"]
    assert tuned >= base + 0.3, (base, tuned)
    assert tuned >= 0.8

    training = json.loads((run / "training_report.json").read_text())
    assert training["loss_curve"][-1]["loss"] < training["loss_curve"][0]["loss"]
    assert training["resumed_from_step"] == 0

    # The merged model is a plain transformers model that carries the chat template (loaded in
    # this process: the chain's worker has transformers imported already).
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = run / "stages" / "export" / "merged"
    assert type(AutoModelForCausalLM.from_pretrained(merged)).__name__ == "LlamaForCausalLM"
    assert AutoTokenizer.from_pretrained(merged).chat_template

    # The same command again reuses every finished stage from the store.
    again = llmops(cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    second = max(tmp_path.glob("outputs/runs/*/*/manifest.json"), key=lambda p: p.parent.name)
    statuses = {s["status"] for s in json.loads(second.read_text())["stages"].values()}
    assert statuses == {"cached"}
