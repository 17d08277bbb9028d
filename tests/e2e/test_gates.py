"""Quality gates end to end: a failed gate stops the plan before export with exit code 3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# A small tiny-default run: quick pre-training, few SFT steps, a small dataset. Only the accuracy
# gate differs between the commands; the other gates are made reachable.
SMALL = ["usecase=none", "progress=false", "model.pretrain.steps=30",
         "model.pretrain.n_examples=200",
         "data.n_examples=120", "train.max_steps=8", "eval.gates.format.threshold=0",
         "eval.gates.safety.threshold=0", "eval.gates.no_regression.tolerance=1"]


def _llmops(tmp: Path, run: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "llmops", *SMALL, f"store_dir={tmp / 'store'}",
         f"hydra.run.dir={tmp / run}", *args],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=600,
    )


@pytest.mark.slow
def test_unreachable_gate_exits_3_before_export_and_reachable_one_exports(tmp_path):
    r = _llmops(tmp_path, "fail", "eval.gates.accuracy.threshold=0.99")
    assert r.returncode == 3, r.stdout[-2000:] + r.stderr[-2000:]
    assert "accuracy: tool.exact_match" in r.stderr and "needs ≥ 0.990" in r.stderr
    assert "short by" in r.stderr
    manifest = json.loads((tmp_path / "fail" / "manifest.json").read_text())
    assert manifest["stages"]["export"]["status"] == "skipped"
    assert not (tmp_path / "fail" / "export_report.json").exists()
    report = json.loads((tmp_path / "fail" / "eval_report.json").read_text())
    gate = next(g for g in report["gates"] if g["name"] == "accuracy")
    assert report["passed"] is False and gate["passed"] is False
    assert {"metric", "value", "threshold", "direction", "margin"} <= set(gate)
    assert gate["threshold"] == 0.99 and gate["margin"] < 0

    r = _llmops(tmp_path, "pass", "eval.gates.accuracy.threshold=0.0")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    manifest = json.loads((tmp_path / "pass" / "manifest.json").read_text())
    assert manifest["stages"]["export"]["status"] == "ran"
    assert json.loads((tmp_path / "pass" / "export_report.json").read_text())["eval_passed"]

    r = _llmops(tmp_path, "record", "eval.gates.accuracy.threshold=0.99", "eval.enforce=false")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert json.loads((tmp_path / "record" / "eval_report.json").read_text())["passed"] is False
    assert (tmp_path / "record" / "export_report.json").is_file()
