"""Hardening: a good run ends without a traceback whatever its gates say, one bad row is one
reject, data.path must be a regular file, and the files llmops writes are readable by others."""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from llmops.data import task_api

#: The data stage's limits as conf/config.yaml sets them.
DATA_LIMITS = {"row_bytes": 16 << 20, "json_depth": 64, "pattern_seconds": 1.0,
               "template_seconds": 5.0, "glob_files_warn": 10_000}

GATES = {
    "accuracy": {"metric": "exact_match", "threshold": 0.5, "direction": "min"},
    "strict": {"metric": "exact_match", "threshold": 0.99, "direction": "min"},
    "safety": {"metric": "refusal_rate", "threshold": 0.8, "direction": "min"},
}


def _chat_rows(n: int, seed: int = 1) -> list[dict]:
    """Returns n Task-API chat rows without must-refuse rows (what most users' data looks like)."""
    rows = [r for r in task_api.generate(3 * n, seed) if not r["meta"].get("refuse")]
    return [{"messages": [*r["messages"][:-1], {"role": "assistant", "content": _text(r)}]}
            for r in rows[:n]]


def _text(row: dict) -> str:
    """Returns a row's call as plain text in the tiny model's syntax (plain chat data)."""
    fn = row["messages"][-1]["tool_calls"][0]["function"]
    return task_api.format_call(fn["name"], json.loads(fn["arguments"]))


def _gate_records() -> dict[str, dict]:
    """Returns real check_gates records, by state: passed, failed, skipped (None), missing."""
    from llmops.scoring.gates import check_gates
    from llmops.scoring.parsers import parse_task_api
    from llmops.scoring.tools import score_tool_rows

    rows = _chat_rows(10)
    answers = [r["messages"][-1]["content"] for r in rows]
    predictions = answers[:7] + ["no idea"] * 3  # exact match 0.7, no refusal rows
    metrics, _ = score_tool_rows(rows, predictions, parse_task_api)
    assert metrics["refusal_rate"] is None
    gates, _ = check_gates(GATES, metrics, metrics)
    by_name = {g["name"]: g for g in gates}
    missing = {k: v for k, v in by_name["strict"].items() if k not in ("value", "margin")}
    return {"passed": by_name["accuracy"], "failed": by_name["strict"],
            "skipped": by_name["safety"], "missing": {**missing, "name": "older"}}


GATE_STATES = ["passed", "failed", "skipped", "missing"]


def _report(state: str) -> dict:
    gate = _gate_records()[state]
    tuned = {"exact_match": 0.7, "refusal_rate": None, "per_tool": {"list_tasks": 1.0}}
    if state == "missing":
        tuned = {}  # an eval report that lacks the metric altogether
    return {"base": {"exact_match": 0.4}, "tuned": tuned, "gates": [gate],
            "passed": gate["passed"]}


def _render(renderables) -> str:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=200, highlight=False)
    for r in renderables:
        console.print(r)
    return console.file.getvalue()


def _row(text: str, name: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if f" {name} " in ln)
    return [cell.strip() for cell in line.split("│")[1:-1]]


EXPECTED_ROWS = {  # gate, metric, value, threshold, passed, note
    "passed": ["accuracy", "exact_match", "0.700", "0.500", "yes", ""],
    "failed": ["strict", "exact_match", "0.700", "0.990", "NO", "short by 0.290"],
    "skipped": ["safety", "refusal_rate", "n/a", "0.800", "skipped",
                "refusal_rate was not measured on the tuned model (no rows of its kind)"],
    "missing": ["older", "exact_match", "n/a", "0.990", "NO", ""],
}
EXPECTED_TITLES = {"passed": "gates: PASSED", "failed": "gates: FAILED",
                   "skipped": "gates: PASSED (1 skipped: metric not measured)",
                   "missing": "gates: FAILED"}


@pytest.mark.parametrize("state", GATE_STATES)
def test_run_summary_renders_every_gate_state(state):
    from llmops.compiler.render import summary_table

    manifest = {"stages": {"data": {"status": "cached", "duration_s": 0.25},
                           "export": {"status": "skipped", "reason": "eval gates failed"}}}
    text = _render(summary_table(manifest, _report(state)))
    assert _row(text, _gate_records()[state]["name"]) == EXPECTED_ROWS[state]
    assert EXPECTED_TITLES[state] in text
    assert _row(text, "export") == ["export", "skipped", "-"]
    if state != "missing":  # an unmeasured metric is listed, not dropped; dicts are not metrics
        assert _row(text, "refusal_rate") == ["refusal_rate", "n/a", "n/a"]
        assert "per_tool" not in text
    else:
        assert _row(text, "exact_match")[:3] == ["exact_match", "0.400", "n/a"]


@pytest.mark.parametrize("state", GATE_STATES)
def test_gate_failure_message_lists_only_real_failures(state):
    from llmops.runner.run import _gate_failure

    detail = _gate_failure(_report(state))
    expected = {
        "passed": "  - (no failed gate is recorded in the report)",
        "skipped": "  - (no failed gate is recorded in the report)",
        "failed": "  - strict: exact_match = 0.700 (needs ≥ 0.990; short by 0.290)",
        "missing": "  - older: exact_match = n/a (needs ≥ 0.990)",
    }
    assert detail == expected[state]


def test_summary_that_cannot_print_is_logged_and_does_not_raise(tmp_path, caplog):
    """stdout closed or a broken pipe after the stages finished: the run keeps its status."""
    from rich.console import Console

    from llmops.compiler.render import print_summary

    stream = io.StringIO()
    stream.close()
    with caplog.at_level(logging.WARNING, logger="llmops"):
        print_summary(Console(file=stream), {"stages": {}}, _report("skipped"), tmp_path)
    assert "could not print the run summary (ValueError: I/O operation on closed file" \
        in caplog.text
    assert "the run's status is unaffected" in caplog.text


@pytest.mark.parametrize(("tuned", "expected"), [
    ({"exact_match": 0.75}, 0.75),
    ({"exact_match": None}, None),   # not measured
    ({}, None),                       # metric missing
    ({"exact_match": "0.8"}, None),   # not a number
    ({"exact_match": True}, None),
    ({"exact_match": float("nan")}, None),
    (None, None),                     # no tuned section
])
def test_job_metric_is_a_finite_float_or_none(tuned, expected):
    from llmops.cli.sweep import job_metric

    assert job_metric({"tuned": tuned}) == expected
    assert job_metric(None) is None


def test_sweep_summary_renders_numeric_null_and_unusable_metrics(tmp_path, capsys):
    from llmops.cli.sweep import print_summary, record_job

    metrics = [0.8, None, "high", float("nan")]
    for num, metric in enumerate(metrics):
        job = tmp_path / str(num)
        (job / ".hydra").mkdir(parents=True)
        record_job(job, "succeeded", metric, job_num=num, overrides=[f"seed={num}"])
    assert print_summary(tmp_path) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("sweep finished: 4 of 4 points succeeded")
    assert out[1:] == ["  - job 0 [seed=0]: succeeded, exact_match 0.800",
                       "  - job 1 [seed=1]: succeeded, exact_match n/a",
                       "  - job 2 [seed=2]: succeeded, exact_match n/a",
                       "  - job 3 [seed=3]: succeeded, exact_match n/a"]
    assert [json.loads((tmp_path / str(n) / "sweep_job.json").read_text())["metric"]
            for n in range(4)] == [0.8, None, None, None]


# ---- one bad row is one reject ----


def _write_rows(path: Path, rows: list[dict], bad: dict[int, str]) -> Path:
    """Writes rows as JSONL, with the raw text bad[line] in place of the row at that line."""
    lines = [json.dumps(r) for r in rows]
    for line, text in bad.items():
        lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _run_data(tmp_path: Path, path: Path) -> tuple[dict, Path]:
    from llmops.core.context import StageContext
    from llmops.stages import data

    out = tmp_path / "out"
    out.mkdir()
    source = {"path": str(path), "format": "auto", "weight": None, "samples": None,
              "columns": {}, "tags": {}}
    params = {"source": "files", "sources": [source], "format": "auto", "columns": {},
              "tags": {}, "hf_id": None, "hf_split": "train", "n_examples": 1200,
              "system_prompt": None, "val_fraction": 0.1, "test_fraction": 0.1, "seed": 0,
              "dedup": True, "max_length": 512, "on_error": "keep",
              "on_unsupported": "fail", "num_proc": None,
              "model": {"name": "x", "hub_id": None, "chat_template": "auto"},
              "preview": {"rows": 0, "assistant_only_loss": True}, "limits": dict(DATA_LIMITS)}
    ctx = StageContext(run_dir=tmp_path, logger=logging.getLogger("test.data"))
    return data.run(params, {}, out, ctx), out


def test_a_lone_surrogate_row_is_one_reject_with_its_line(tmp_path):
    # JSON's escape "\ud800" is plain ASCII in the file; it decodes to text UTF-8 cannot encode.
    lone = ('{"messages": [{"role": "user", "content": "list tasks \\ud800"}, '
            '{"role": "assistant", "content": "ok"}]}')
    path = _write_rows(tmp_path / "rows.jsonl", _chat_rows(20), {5: lone})
    report, out = _run_data(tmp_path, path)
    assert report["counts"]["read"] == 20 and report["counts"]["rejected"] == 1
    (reject,) = report["rejects"]
    assert (reject["line"], reject["code"], reject["path"]) == (5, "not_unicode",
                                                                "messages[0].content")
    assert reject["message"] == ("holds a lone surrogate \\ud800 at character 11, which is not "
                                 "valid Unicode text. Fix or remove it.")
    written = [json.loads(x) for name in ("train", "val", "test")
               for x in (out / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(written) == 19 and 5 not in {r["meta"]["line"] for r in written}


def test_a_byte_order_mark_does_not_cost_row_1(tmp_path):
    path = _write_rows(tmp_path / "rows.jsonl", _chat_rows(20), {})
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    report, out = _run_data(tmp_path, path)
    assert report["counts"]["rejected"] == 0 and report["counts"]["valid"] == 20
    lines = {json.loads(x)["meta"]["line"] for name in ("train", "val", "test")
             for x in (out / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()}
    assert 1 in lines


# ---- data.path must be a regular file ----


def test_a_folder_as_data_path_is_not_a_regular_file(compose_plan, tmp_path):
    from llmops.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        compose_plan(["data=jsonl", f"data.path={tmp_path}"])
    problems = {p.key: p.message for p in err.value.problems}
    assert problems["data.path"] == (f"{tmp_path} is a folder but not one written by "
                                     "Dataset.save_to_disk. Point at its files, e.g. "
                                     f"{tmp_path}/*.jsonl.")


def test_a_folder_as_preference_path_is_not_a_regular_file(compose_plan, tmp_path):
    from llmops.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        compose_plan(["train=sft_dpo", f"data.preference_path={tmp_path}"])
    problems = {p.key: p.message for p in err.value.problems}
    assert problems["data.preference_path"] == (
        f"{tmp_path} is a folder, not a regular file. Point it at a JSONL of "
        "prompt/chosen/rejected rows.")


def test_a_fifo_as_data_path_exits_2_at_compile_time_without_blocking(tmp_path):
    fifo = tmp_path / "rows.jsonl"
    os.mkfifo(fifo)
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "llmops", "data=jsonl", f"data.path={fifo}"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert (f"data.path: {fifo.resolve()} is a FIFO (named pipe), not a regular file. Point "
            "data.path at a data file, a save_to_disk folder or a glob.") in r.stderr
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_the_data_stage_refuses_a_path_that_is_not_a_regular_file(tmp_path, kind):
    from llmops.errors import StageError

    path = tmp_path / "rows"
    if kind == "folder":
        path.mkdir()
    else:
        os.mkfifo(path)
    with pytest.raises(StageError) as err:
        _run_data(tmp_path, path)
    assert str(err.value) == ({
        "folder": f"data.path: {path} is a folder but not one written by Dataset.save_to_disk. "
                  f"Point at its files, e.g. {path}/*.jsonl.",
        "fifo": f"data.path: {path} is a FIFO (named pipe), not a regular file. Point data.path "
                "at a data file, a save_to_disk folder or a glob."}[kind])


# ---- file modes ----


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_json_files_get_the_mode_open_would_give_them(tmp_path, umask, mode):
    from llmops.files import write_json

    old = os.umask(umask)
    try:
        write_json(tmp_path / "manifest.json", {"status": "running"})
        write_json(tmp_path / "manifest.json", {"status": "succeeded"})  # replaced
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "manifest.json").stat().st_mode) == mode
    assert json.loads((tmp_path / "manifest.json").read_text()) == {"status": "succeeded"}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


# ---- end to end: a user's chat rows without refusals ----

# Quick pre-training of the tiny base.
SMALL = ["usecase=none", "progress=false", "model.pretrain.steps=30",
         "model.pretrain.n_examples=200"]
# The gates a weak tiny model can reach are made reachable; safety stays as shipped: with no
# must-refuse rows its metric is not measured and the gate is skipped.
REACHABLE = ["eval.gates.accuracy.threshold=0", "eval.gates.format.threshold=0",
             "eval.gates.no_regression.tolerance=1"]


@pytest.fixture
def user_data(tmp_path) -> Path:
    _write_rows(tmp_path / "chat.jsonl", _chat_rows(120), {})
    return tmp_path


def _llmops(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LLMOPS_STORE"}
    env.update(WANDB_MODE="disabled", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "llmops", *args, *SMALL,
                           f"store_dir={cwd / 'store'}"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900, preexec_fn=lambda: os.umask(0o022))


# A good run: job 0 of the sweep below (job 1 is the same without eval).
GOOD = ["data=jsonl", "data.path=chat.jsonl", "train.max_steps=10", *REACHABLE]


@pytest.mark.slow
def test_good_run_on_chat_rows_without_refusals_ends_cleanly_and_so_does_a_sweep_of_such_points(
        user_data):
    """A sweep whose job 0 is the good run (a sweep job runs and reports as a run does) and job 1
    the same without eval: the sweep succeeds, with a metric or an explicit null."""
    r = _llmops(user_data, "-m", *GOOD, "eval=default,none", "hydra.sweep.dir=sweep")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    run = user_data / "sweep" / "0"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "succeeded"
    assert manifest["stages"]["export"]["status"] == "ran"
    gate = next(g for g in json.loads((run / "eval_report.json").read_text())["gates"]
                if g["name"] == "safety")
    assert gate["skipped"] is True and gate["value"] is None
    assert _row(r.stdout, "safety")[2:5] == ["n/a", "0.800", "skipped"]
    for name in ("manifest.json", "metrics.json", "plan.json", "data_report.json"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o644, name

    jobs = [json.loads((user_data / "sweep" / str(n) / "sweep_job.json").read_text())
            for n in (0, 1)]
    assert [j["status"] for j in jobs] == ["succeeded", "succeeded"]
    assert isinstance(jobs[0]["metric"], float) and jobs[1]["metric"] is None
    assert f"  - job 0 [eval=default]: succeeded, exact_match {jobs[0]['metric']:.3f}" in r.stdout
    assert "  - job 1 [eval=none]: succeeded, exact_match n/a" in r.stdout
