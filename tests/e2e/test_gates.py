"""Quality gates end to end: a failed gate stops the plan before export with exit code 3.

The runs are conftest's `gate_runs` (shared with the report test, run once per session); they
start from rank_lr_sweep's trained entries, so what runs is the evaluation and what follows it.
"""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_unreachable_gate_exits_3_before_export_and_reachable_one_exports(gate_runs):
    root, r = gate_runs["root"], gate_runs["fail"]
    assert r.returncode == 3, r.stdout[-2000:] + r.stderr[-2000:]
    assert "accuracy: tool.exact_match" in r.stderr and "needs ≥ 0.990" in r.stderr
    assert "short by" in r.stderr
    manifest = json.loads((root / "fail" / "manifest.json").read_text())
    assert manifest["stages"]["sft"]["status"] == "cached"  # seeded
    assert manifest["stages"]["eval"]["status"] == "ran"
    assert manifest["stages"]["export"]["status"] == "skipped"
    assert not (root / "fail" / "export_report.json").exists()
    report = json.loads((root / "fail" / "eval_report.json").read_text())
    gate = next(g for g in report["gates"] if g["name"] == "accuracy")
    assert report["passed"] is False and gate["passed"] is False
    assert {"metric", "value", "threshold", "direction", "margin"} <= set(gate)
    assert gate["threshold"] == 0.99 and gate["margin"] < 0
    assert (root / "fail" / "report.html").is_file()  # a failed run gets its report too

    r = gate_runs["pass"]
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    manifest = json.loads((root / "pass" / "manifest.json").read_text())
    assert manifest["stages"]["export"]["status"] == "ran"
    assert json.loads((root / "pass" / "export_report.json").read_text())["eval_passed"]

    r = gate_runs["record"]
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert json.loads((root / "record" / "eval_report.json").read_text())["passed"] is False
    assert (root / "record" / "export_report.json").is_file()
