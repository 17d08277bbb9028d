"""Tracking: metrics.json for every job, and the W&B sink on a real offline W&B run.

The W&B tests start real offline runs (no server exists here) and read them back with
`wandb leet inspect`, the way a user would before `wandb sync`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llmops.errors import ConfigError

FAKE_KEY = "llmopsfakekey0123456789abcdefghijklmnopqrstuv"  # 45 chars: passes wandb's format check
TINY = ["model=tiny", "usecase=none", "deploy=none"]

# Shapes as the sft and eval stages write them (trimmed).
TRAINING_REPORT = {
    "backend": "hf", "artifact": "adapter", "final_loss": 0.42, "eval_loss": 0.5,
    "train_runtime_s": 3.2, "tokens_per_s": 5000.0, "steps": 20, "resumed_from_step": 0,
    "loss_curve": [{"step": 1, "loss": 2.2, "learning_rate": 5e-3},
                   {"step": 10, "loss": 0.9, "learning_rate": 2.5e-3},
                   {"step": 20, "loss": 0.42, "learning_rate": 0.0}],
}
BASE_METRICS = {"exact_match": 0.4, "json_valid_rate": 0.9, "refusal_rate": 1.0,
                "per_tool": {"create_task": 0.5}, "counts": {"total": 8}}
TUNED_METRICS = {"exact_match": 0.875, "json_valid_rate": 1.0, "refusal_rate": 1.0,
                 "per_tool": {"create_task": 1.0}, "counts": {"total": 8}}
EVAL_REPORT = {
    "base": BASE_METRICS, "tuned": TUNED_METRICS, "passed": False,
    "deltas": {"exact_match": 0.475, "json_valid_rate": 0.1, "refusal_rate": 0.0},
    "gates": [
        {"name": "accuracy", "metric": "exact_match", "value": 0.875, "threshold": 0.8,
         "direction": "min", "passed": True, "margin": 0.075, "skipped": False},
        {"name": "format", "metric": "json_valid_rate", "value": 1.0, "threshold": 1.01,
         "direction": "min", "passed": False, "margin": -0.01, "skipped": False},
    ],
}
REPORTS = {"sft": TRAINING_REPORT, "eval_base": {"metrics": BASE_METRICS}, "eval": EVAL_REPORT}


def _replay(plan, run_dir: Path, overrides: list[str]) -> dict:
    """Feeds the tracking hooks exactly as run_plan does, with real report shapes."""
    from llmops.runner.manifest import Manifest
    from llmops.tracking.metrics import start_tracking

    manifest = Manifest(plan, run_dir, overrides)
    tracking = start_tracking(plan, run_dir, manifest)
    for spec in plan.stages:
        report = REPORTS.get(spec.kind, {})
        if report:
            (run_dir / spec.report).write_text(json.dumps(report))
        manifest.stage(spec.name, status="cached" if spec.kind == "data" else "ran",
                       duration_s=1.0, report=spec.report)
        tracking.log_stage(spec, report)
    manifest.finish("succeeded", duration_s=5.0)
    return manifest.data


def _inspect(run_dir: Path) -> tuple[dict, dict]:
    """Returns (`wandb leet inspect --summary --json`, the run record) of the job's W&B run."""
    [wandb_run] = list((run_dir / "wandb").glob("offline-run-*"))
    wandb_exe = Path(sys.executable).parent / "wandb"
    out = subprocess.run([str(wandb_exe), "leet", "inspect", "--summary", "--json",
                          str(wandb_run)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    records = subprocess.run([str(wandb_exe), "leet", "inspect", "--json", str(wandb_run)],
                             capture_output=True, text=True, timeout=60).stdout.splitlines()
    [run_record] = [json.loads(r)["run"] for r in records if json.loads(r).get("type") == "run"]
    return json.loads(out.stdout), run_record


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """A W&B-offline environment with no credentials anywhere (HOME without a netrc)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "home" / ".config" / "wandb"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "home" / ".cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "home" / ".data"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("NETRC", raising=False)
    (tmp_path / "home").mkdir()


def test_tracking_none_writes_metrics_json_and_nothing_else(compose_plan, tmp_path):
    from llmops.runner.run import run_plan

    _, plan = compose_plan(["model=qwen0.5b", "train=none", "eval=none", "deploy=none",
                            "usecase=none", f"store_dir={tmp_path / 'store'}"])
    # the data stage runs here (tracking is what is checked, not the stage process)
    run_plan(plan, tmp_path / "run", ["train=none", "data.n_examples=300"], stage_process=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "succeeded"
    assert metrics["params"] == {"train": "none", "data.n_examples": "300"}
    assert metrics["command"] == "python -m llmops train=none data.n_examples=300"
    assert metrics["stages"] == {"data": "ran"} and metrics["stage_counts"] == {"ran": 1}
    assert metrics["tracking"] is None
    assert not (tmp_path / "run" / "wandb").exists()


def test_metrics_json_has_what_compare_needs(compose_plan, tmp_path):
    _, plan = compose_plan([*TINY, "tracking=none"])
    _replay(plan, tmp_path, ["lora=r8", "train.learning_rate=1e-3"])
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["tuned"]["exact_match"] == 0.875 and m["base"]["exact_match"] == 0.4
    assert "per_tool" not in m["tuned"]  # scalars only
    assert m["gates"]["format"]["passed"] is False and m["gates_passed"] is False
    assert (m["final_loss"], m["train_seconds"], m["steps"]) == (0.42, 3.2, 20)
    assert m["loss_curve"] == "training_report.json"
    assert m["stage_counts"]["cached"] == 1 and m["status"] == "succeeded"


def test_metrics_json_names_the_method_and_its_held_out_pairs(compose_plan, tmp_path,
                                                              monkeypatch):
    held = {"start": "sft", "sft": {"n": 8, "logp_accuracy": 0.5, "logp_margin": 1.0},
            "orpo": {"n": 8, "logp_accuracy": 0.75, "logp_margin": 4.5}, "improved": True}
    monkeypatch.setitem(REPORTS, "orpo", {"held_out": held, "final_loss": 0.3})
    _, plan = compose_plan([*TINY, "tracking=none", "train=sft_orpo"])
    _replay(plan, tmp_path, ["train=sft_orpo"])
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["method"] == "sft_orpo"
    assert m["preference"] == {"start.logp_accuracy": 0.5, "start.logp_margin": 1.0,
                               "tuned.logp_accuracy": 0.75, "tuned.logp_margin": 4.5}


def test_metrics_json_and_the_leaderboard_row_hold_grpos_held_out_rewards(compose_plan, tmp_path,
                                                                          monkeypatch):
    from llmops.tracking.leaderboard import row_from_run_dir

    held = {"start": "sft", "sft": {"n": 8, "mean_reward": 0.25, "parse_rate": 0.625},
            "grpo": {"n": 8, "mean_reward": 0.32, "parse_rate": 0.875}, "improved": True}
    monkeypatch.setitem(REPORTS, "grpo", {"held_out": held, "final_loss": 0.1})
    _, plan = compose_plan([*TINY, "tracking=none", "train=sft_grpo"])
    _replay(plan, tmp_path, ["train=sft_grpo"])
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["method"] == "sft_grpo" and "preference" not in m
    assert m["grpo"] == {"start.mean_reward": 0.25, "start.parse_rate": 0.625,
                         "tuned.mean_reward": 0.32, "tuned.parse_rate": 0.875}
    row = row_from_run_dir(tmp_path)
    assert row["grpo.start.mean_reward"] == 0.25 and row["grpo.tuned.mean_reward"] == 0.32


def test_wandb_offline_run_has_group_name_tags_config_curves_and_metrics(
        compose_plan, tmp_path, offline, monkeypatch):
    curve = [{"step": 1, "loss": 0.1, "reward": 0.2, "kl": 0.0, "rewards/exact_match/mean": 0.0},
             {"step": 2, "loss": 0.1, "reward": 0.3, "kl": 0.01, "rewards/exact_match/mean": 0.1}]
    monkeypatch.setitem(REPORTS, "grpo", {"loss_curve": curve, "steps": 2, "held_out": {
        "start": "sft", "sft": {"mean_reward": 0.25}, "grpo": {"mean_reward": 0.32}}})
    sweep = tmp_path / "sweep-rank"
    (sweep / "0").mkdir(parents=True)
    (sweep / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    task: ['lora=r8,r16', 'train.learning_rate=1e-3']\n"
        "  sweeper:\n    params: {}\n")
    overrides = ["lora=r16", "train.learning_rate=1e-3", f"store_dir={tmp_path}",
                 "train=sft_grpo"]
    _, plan = compose_plan([*TINY, "tracking=wandb", "tracking.tags=[nightly]", *overrides])
    manifest = _replay(plan, sweep / "0", overrides)

    assert manifest["tracking"]["mode"] == "offline" and manifest["tracking"]["group"] == (
        "sweep-rank")
    summary, run = _inspect(sweep / "0")
    assert run["run_group"] == "sweep-rank" and run["job_type"] == "pipeline"
    assert run["display_name"] == "lora=r16"  # the swept value names the run
    assert set(run["tags"]) == {"model=tiny", "lora=r16", "quant=none", "nightly"}
    assert summary["state"] == "finished" and summary["exit_code"] == 0
    cfg = summary["config"]
    assert cfg["lora"]["r"] == 16 and cfg["model"]["name"] == "tiny"
    assert cfg["llmops"]["swept"] == ["lora"]
    assert cfg["llmops"]["command"].startswith("python -m llmops lora=r16 ")
    s = summary["summary"]
    assert s["eval/tuned/exact_match"] == 0.875 and s["eval/base/exact_match"] == 0.4
    assert s["gates/format/passed"] is False and s["gates/passed"] is False
    assert s["train/final_loss"] == 0.42 and s["train/loss"] == 0.42  # last curve point
    assert s["status"] == "succeeded"
    # GRPO: its held-out rewards, and its per-step curves (the last point in the summary)
    assert s["grpo/held_out/sft/mean_reward"] == 0.25
    assert s["grpo/held_out/grpo/mean_reward"] == 0.32 and s["grpo/steps"] == 2
    assert s["grpo/reward"] == 0.3 and s["grpo/rewards/exact_match/mean"] == 0.1
    files = Path(manifest["tracking"]["run_dir"]) / "files"
    assert json.loads((files / "metrics.json").read_text())["status"] == "succeeded"


def test_api_key_is_never_written(compose_plan, tmp_path, offline, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    _, plan = compose_plan([*TINY, "tracking=wandb", "tracking.mode=offline"])
    _replay(plan, tmp_path / "run", ["tracking=wandb"])
    written = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in written)
    leaks = [str(p) for p in written if FAKE_KEY.encode() in p.read_bytes()]
    assert leaks == []


def test_mode_auto_is_offline_without_credentials_and_online_with_them(offline, monkeypatch):
    from llmops.tracking.wandb_sink import resolve_mode

    monkeypatch.delenv("WANDB_MODE")
    assert resolve_mode("auto")[0] == "offline"
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    assert resolve_mode("auto")[0] == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("auto")[0] == "disabled"
    assert resolve_mode("offline")[0] == "offline"  # tracking.mode wins over the environment


def test_mode_disabled_logs_nothing(compose_plan, tmp_path, offline):
    _, plan = compose_plan([*TINY, "tracking=wandb", "tracking.mode=disabled"])
    _replay(plan, tmp_path, [])
    assert not (tmp_path / "wandb").exists() and (tmp_path / "metrics.json").is_file()


def test_missing_wandb_is_a_config_error_naming_the_extra(compose_plan, monkeypatch):
    import llmops.env

    real = llmops.env.detect()
    monkeypatch.setattr(llmops.env, "detect", lambda: llmops.env.Environment(
        gpus=real.gpus, cpu_count=real.cpu_count, memory_gb=real.memory_gb,
        installed=real.installed - {"wandb"}))
    with pytest.raises(ConfigError) as exc:
        compose_plan([*TINY, "tracking=wandb"])
    [problem] = [p for p in exc.value.problems if p.key == "tracking.backend"]
    assert problem.message == ("'wandb' needs wandb, which is not installed. "
                               "pip install 'llmops[tracking]', or use tracking=none.")


def test_compile_and_runner_import_no_wandb_with_tracking_wandb(tmp_path):
    code = (
        "import sys\n"
        "from llmops.cli import preflight\n"
        "import llmops.runner.run, llmops.tracking.metrics, llmops.compare\n"
        "preflight(['tracking=wandb', 'dry_run=true'])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'wandb'))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_reproduce_command_reruns_one_point_of_a_named_sweep():
    from llmops.tracking.jobs import reproduce_command, sweep_group

    assert reproduce_command(["lora=r16", "train.learning_rate=2e-4"]) == (
        "python -m llmops lora=r16 train.learning_rate=2e-4")
    assert reproduce_command(["sweeps=rank_lr", "lora=r16", "data.system_prompt=Be brief"]) == (
        "python -m llmops sweeps=rank_lr lora=r16 'data.system_prompt=Be brief' hydra.mode=RUN")
    assert sweep_group(Path("outputs/multirun/2026-11-23/10-38-00")) == "2026-11-23_10-38-00"
    assert sweep_group(Path("/tmp/my-sweep")) == "my-sweep"
