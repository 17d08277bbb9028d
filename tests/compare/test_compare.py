"""`python -m llmops.compare` on a real 2-point tiny sweep, on edited copies of it, and on W&B rows.

The sweep is conftest's `rank_lr_sweep` (`sweeps=rank_lr lora=r8`: the learning rate 0.002 and
0.005, run once per session); a test that writes into a sweep folder works on a copy of it.
The W&B path cannot be run against a server here: its row building is tested on a fake run object
shaped like `wandb.Api()` runs as the W&B sink logs them.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

LRS = {"0": "0.002", "1": "0.005"}  # each job's learning rate


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture
def sweep(rank_lr_sweep) -> Path:
    """Returns the shared rank_lr sweep's multirun folder (read it; copy it to write)."""
    assert rank_lr_sweep["result"].returncode == 0, rank_lr_sweep["result"].stderr[-3000:]
    return rank_lr_sweep["sweep"]


def _copy(sweep: Path, dest: Path, exact_match: dict[str, float]) -> Path:
    shutil.copytree(sweep, dest, symlinks=True)
    for job, value in exact_match.items():
        path = dest / job / "metrics.json"
        m = json.loads(path.read_text())
        m["tuned"]["exact_match"] = value
        path.write_text(json.dumps(m))
    return dest


def test_every_job_writes_metrics_json(sweep):
    for job, lr in LRS.items():
        m = json.loads((sweep / job / "metrics.json").read_text())
        assert m["status"] == "succeeded" and m["swept"] == ["lora", "train.learning_rate"]
        assert m["params"]["train.learning_rate"] == lr and m["sweep"]["job"] == int(job)
        assert set(m["tuned"]) >= {"exact_match", "json_valid_rate"} and m["steps"] == 10
        assert m["command"].startswith(f"python -m llmops lora=r8 train.learning_rate={lr} ")
    assert json.loads((sweep / "1" / "metrics.json").read_text())["stages"]["data"] == "cached"


def test_compare_command_writes_table_csv_png_and_best_line(sweep, tmp_path):
    sweep = shutil.copytree(sweep, tmp_path / "sweep", symlinks=True)
    r = _run("llmops.compare", str(sweep), cwd=sweep)
    assert r.returncode == 0, r.stderr
    assert "leaderboard: 2 runs, best first by exact_match" in r.stdout
    assert (sweep / "comparison.png").stat().st_size > 10_000
    with open(sweep / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:7] == ["rank", "run", "status", "method", "lora",
                                 "train.learning_rate", "exact_match"]  # the sweep's keys
    assert {r["method"] for r in rows} == {"sft"}
    assert {"tuned.json_valid_rate", "base.exact_match", "gates_passed", "final_loss",
            "command"} <= set(rows[0])
    assert [r["rank"] for r in rows] == ["1", "2"]
    best = json.loads((sweep / rows[0]["run"] / "metrics.json").read_text())
    assert f"  {best['command']}\n" in r.stdout


def test_leaderboard_is_best_first_and_names_the_best_override_line(sweep, tmp_path, capsys):
    from llmops.compare import compare, find_runs

    d = _copy(sweep, tmp_path / "sw", {"0": 0.5, "1": 0.9})
    best = compare(find_runs(d), d)
    out = capsys.readouterr().out
    assert best["run"] == "1" and best["params"]["train.learning_rate"] == "0.005"
    assert out.index("│ 1 │ 1 ") < out.index("│ 2 │ 0 ")
    line = out.split("Reproduce it with:\n")[1].strip()
    assert line.startswith("python -m llmops lora=r8 train.learning_rate=0.005 sweeps=rank_lr ")
    # Where the sweep ran (hydra.sweep.dir) is not part of the point; its one point reruns alone.
    assert "hydra.sweep" not in line and line.endswith(" hydra.mode=RUN")
    with open(d / "comparison.csv") as f:
        assert [(r["run"], r["exact_match"]) for r in csv.DictReader(f)] == [("1", "0.9"),
                                                                           ("0", "0.5")]
    # --metric with a lower-is-better metric flips the order
    assert compare(find_runs(d), d, metric="tuned.exact_match", ascending=True)["run"] == "0"


def test_compare_without_metrics_json_reads_the_reports(sweep, tmp_path):
    from llmops.compare import find_runs, swept_columns

    d = _copy(sweep, tmp_path / "old", {})
    for job in LRS:
        (d / job / "metrics.json").unlink()
    rows = find_runs(d)
    assert [r["run"] for r in rows] == ["0", "1"]
    assert swept_columns(rows) == ["lora", "train.learning_rate"]
    assert rows[0]["loss_curve"] and rows[0]["tuned.exact_match"] is not None
    assert rows[0]["command"].startswith("python -m llmops lora=r8 train.learning_rate=0.002 ")


def test_compare_on_a_folder_of_single_runs_uses_what_differs(sweep, tmp_path):
    from llmops.compare import find_runs, swept_columns

    runs = tmp_path / "runs"
    for job, day in (("0", "2026-01-01/10-00-00"), ("1", "2026-01-02/09-00-00")):
        shutil.copytree(sweep / job, runs / day, symlinks=True)
        m = json.loads((runs / day / "metrics.json").read_text())
        m.update(swept=[], sweep=None)
        (runs / day / "metrics.json").write_text(json.dumps(m))
    rows = find_runs(runs)
    assert [r["run"] for r in rows] == ["2026-01-01/10-00-00", "2026-01-02/09-00-00"]
    assert swept_columns(rows) == ["train.learning_rate"]


def test_compare_on_an_empty_folder_exits_2(tmp_path):
    r = _run("llmops.compare", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 2 and "no runs found" in r.stderr


class _FakeWandbRun:
    """Shaped like a `wandb.Api()` run logged by llmops' W&B sink."""

    def __init__(self, name: str, r: str, em: float, loss: float):
        self.id, self.name, self.state = name, name, "finished"
        self.url = f"https://wandb.ai/x/{name}"
        self.config = {"lora": {"r": int(r[1:])}, "llmops": {
            "params": {"lora": r, "store_dir": "/s"}, "swept": ["lora"],
            "command": f"python -m llmops lora={r}"}}
        self.summary = {"status": "succeeded", "eval/tuned/exact_match": em,
                        "eval/tuned/per_tool/create_task": 1.0, "eval/base/exact_match": 0.4,
                        "gates/passed": em > 0.8, "gates/accuracy/passed": em > 0.8,
                        "gates/format/passed": True, "train/final_loss": loss}
        self._history = [{"train/step": 1, "train/loss": 2.0},
                         {"train/step": 10, "train/loss": loss}]

    def scan_history(self, keys=None):
        return iter(self._history)


def test_wandb_rows_rank_like_local_rows(tmp_path, capsys):
    from llmops.compare import compare, row_from_wandb_run

    rows = [row_from_wandb_run(_FakeWandbRun("a", "r8", 0.7, 0.9)),
            row_from_wandb_run(_FakeWandbRun("b", "r16", 0.9, 0.5))]
    assert rows[0]["params"] == {"lora": "r8"} and rows[0]["failed_gates"] == ["accuracy"]
    assert rows[0]["tuned.exact_match"] == 0.7 and "tuned.per_tool" not in rows[0]
    assert rows[1]["loss_curve"] == [(1, 2.0), (10, 0.5)]
    best = compare(rows, tmp_path)
    assert best["run"] == "b" and "python -m llmops lora=r16" in capsys.readouterr().out
    assert (tmp_path / "comparison.csv").is_file() and (tmp_path / "comparison.png").is_file()
