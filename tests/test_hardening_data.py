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

def _chat_rows(n: int, seed: int = 1) -> list[dict]:
    """Returns n Task-API chat rows without must-refuse rows (what most users' data looks like)."""
    rows = [r for r in task_api.generate(3 * n, seed) if not r["meta"].get("refuse")]
    return [{"messages": r["messages"]} for r in rows[:n]]


# ---- one bad row is one reject ----


def _write_rows(path: Path, rows: list[dict], bad: dict[int, str]) -> Path:
    """Writes rows as JSONL, with the raw text bad[line] in place of the row at that line."""
    lines = [json.dumps(r) for r in rows]
    for line, text in bad.items():
        lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _run_data(tmp_path: Path, path: Path) -> tuple[dict, Path]:
    from llmops.stages import data
    from llmops.stages.context import StageContext

    out = tmp_path / "out"
    out.mkdir()
    params = {"source": "jsonl", "path": str(path), "format": "auto", "system_prompt": None,
              "val_fraction": 0.1, "test_fraction": 0.1, "seed": 0, "dedup": True,
              "max_length": 512, "model": {"name": "x", "hub_id": None}}
    ctx = StageContext(run_dir=tmp_path, logger=logging.getLogger("test.data"))
    return data.run(params, {}, out, ctx), out


def test_a_lone_surrogate_row_is_one_reject_with_its_line(tmp_path):
    # JSON's escape "\ud800" is plain ASCII in the file; it decodes to text UTF-8 cannot encode.
    lone = ('{"messages": [{"role": "user", "content": "list tasks \\ud800"}, '
            '{"role": "assistant", "content": "ok"}]}')
    path = _write_rows(tmp_path / "rows.jsonl", _chat_rows(20), {5: lone})
    report, out = _run_data(tmp_path, path)
    assert report["counts"]["read"] == 20 and report["counts"]["rejected"] == 1
    assert report["rejects"] == [{"line": 5, "reason": (
        "messages[0].content holds a lone surrogate \\ud800 at character 11, which is not valid "
        "Unicode text; fix or remove it")}]
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
    assert problems["data.path"] == (f"{tmp_path.resolve()} is a folder, not a regular file. "
                                     "Point data.path at a JSONL file.")


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
            "data.path at a JSONL file.") in r.stderr
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
    what = "a folder" if kind == "folder" else "a FIFO (named pipe)"
    assert str(err.value) == (f"data.path: {path} is {what}, not a regular file. Point data.path "
                              "at a JSONL file.")


# ---- file modes ----


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_json_files_get_the_mode_open_would_give_them(tmp_path, umask, mode):
    from llmops.runner.files import write_json_atomic

    old = os.umask(umask)
    try:
        write_json_atomic(tmp_path / "manifest.json", {"status": "running"})
        write_json_atomic(tmp_path / "manifest.json", {"status": "succeeded"})  # replaced
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "manifest.json").stat().st_mode) == mode
    assert json.loads((tmp_path / "manifest.json").read_text()) == {"status": "succeeded"}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
