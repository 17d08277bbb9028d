"""`python -m llmops.compare` skips a run whose files it cannot use, naming the file and why,
and compares the rest: never a traceback on a deeply nested, non-JSON, NaN or oddly shaped
metrics.json (hand-written run folders; no pipeline run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _metrics(lora: str, exact: float) -> dict:
    return {"status": "succeeded", "params": {"lora": lora}, "swept": ["lora"],
            "overrides": [f"lora={lora}"], "command": f"python -m llmops lora={lora}",
            "tuned": {"exact_match": exact}, "final_loss": 1.0}


BAD = {
    "deep metrics": ("metrics.json", b"[" * 100_000 + b"]" * 100_000,
                     "metrics.json: nested 100000 deep, over limits.json_depth=64"),
    "deep object": ("metrics.json", b'{"a": ' * 70 + b"1" + b"}" * 70,
                    "metrics.json: nested 70 deep, over limits.json_depth=64"),
    "NaN": ("metrics.json", json.dumps(_metrics("r4", float("nan"))).encode(),
            "metrics.json: NaN is not a JSON number"),
    "Infinity": ("metrics.json", b'{"final_loss": -Infinity}',
                 "metrics.json: -Infinity is not a JSON number"),
    "not JSON": ("metrics.json", b'{"status": ', "metrics.json: not JSON"),
    "not UTF-8": ("metrics.json", b'{"status": "\xff"}', "metrics.json: cannot read it"),
    "an array": ("metrics.json", b"[1, 2]", "metrics.json: not a JSON object (got list)"),
    "gates a list": ("metrics.json", json.dumps({**_metrics("r4", 0.5), "gates": [1]}).encode(),
                     "not the shape llmops writes"),
    "deep manifest": ("manifest.json", b"{" + b'"a": {' * 5000 + b"}" * 5001,
                      "manifest.json: nested 5001 deep"),
    "deep eval report": ("eval_report.json", b"[" * 3000 + b"]" * 3000,
                         "eval_report.json: nested 3000 deep"),
}


def _compare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmops.compare", *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "WANDB_MODE": "disabled"})


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Two good runs (0: r8, 1: r16) and one bad run per case (2, 3, ...)."""
    root = tmp_path / "sweep"
    for job, (lora, exact) in enumerate((("r8", 0.7), ("r16", 0.9))):
        (root / str(job)).mkdir(parents=True)
        (root / str(job) / "metrics.json").write_text(json.dumps(_metrics(lora, exact)))
    for job, (name, content, _) in enumerate(BAD.values(), start=2):
        folder = root / str(job)
        folder.mkdir()
        if name != "metrics.json":
            (folder / "metrics.json").write_text(json.dumps(_metrics("r32", 1.0)))
        (folder / name).write_bytes(content)
    return root


def test_compare_skips_each_hostile_run_naming_the_file_and_ranks_the_rest(sweep):
    r = _compare(str(sweep))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    for job, (_, _, says) in enumerate(BAD.values(), start=2):
        line = next((ln for ln in r.stderr.splitlines() if f"{sweep / str(job)}" in ln), "")
        assert line.startswith("compare: skipped a run: ") and says in line, (job, r.stderr)
    assert "leaderboard: 2 runs, best first by exact_match" in r.stdout
    assert "  python -m llmops lora=r16\n" in r.stdout
    assert "nan" not in (sweep / "comparison.csv").read_text().lower()


def test_json_depth_flag_and_all_runs_bad(tmp_path):
    root = tmp_path / "sweep"
    (root / "0").mkdir(parents=True)
    (root / "0" / "metrics.json").write_text(json.dumps(
        {**_metrics("r8", 0.5), "extra": [[[[[[[[[[1]]]]]]]]]]}))
    r = _compare(str(root), "--json-depth", "5")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "metrics.json: nested 11 deep, over limits.json_depth=5" in r.stderr
    assert "compare: no runs found" in r.stderr and "Traceback" not in r.stderr
    r = _compare(str(root))
    assert r.returncode == 0 and "leaderboard: 1 runs" in r.stdout
