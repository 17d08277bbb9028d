"""The store checks what it serves, and gc never deletes what a user still has.

Real runs of the data stage (and, for checkpoints, a real interrupted training), real damage to real
files, and the store command as README.md writes it.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from test_sweeps import CHECKPOINT, _start_until_checkpoint, llmops

from llmops.errors import ConfigError

DATA_ONLY = ["model=qwen0.5b", "train=none", "eval=none", "deploy=none", "usecase=none"]


def _data_run(compose_plan, store: Path, run_dir: Path, n: int) -> Path:
    """Runs the data stage into run_dir (in this process: the entries and run records are the
    runner's either way); returns its store entry."""
    from llmops.runner.run import run_plan

    _, plan = compose_plan([*DATA_ONLY, f"store_dir={store}", f"data.n_examples={n}"])
    return Path(run_plan(plan, run_dir, stage_process=False)["stages"]["data"]["path"])


def _gc(capsys, store: Path, *args: str) -> str:
    from llmops.store.command import main

    assert main(["gc", "--store", str(store), *args]) == 0
    return capsys.readouterr().out


def test_store_verify_accepts_only_size_or_full(compose_plan):
    with pytest.raises(ConfigError) as err:
        compose_plan(["store.verify=fast"])
    assert "store.verify: 'fast' is not one of size, full." in str(err.value)


def test_verify_names_bad_entries_exits_1_and_repair_moves_them_aside(compose_plan, tmp_path):
    store = tmp_path / "outputs" / "store"  # the default store, seen from tmp_path
    good = _data_run(compose_plan, store, tmp_path / "runs" / "good", 100)
    short = _data_run(compose_plan, store, tmp_path / "runs" / "short", 150)
    flipped = _data_run(compose_plan, store, tmp_path / "runs" / "flipped", 200)
    old = _data_run(compose_plan, store, tmp_path / "runs" / "old", 250)
    with open(short / "test.jsonl", "r+b") as f:
        f.truncate(100)
    text = (flipped / "train.jsonl").read_text()
    (flipped / "train.jsonl").write_text(text.replace('"assistant"', '"assistanT"', 1))
    meta = json.loads((old / "_stage.json").read_text())
    del meta["files"]  # published before llmops recorded hashes
    (old / "_stage.json").write_text(json.dumps(meta))

    r = llmops("verify", module="llmops.store", cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    out = " ".join(r.stdout.split())
    assert f"{short.name[:12]} │ bad │ test.jsonl: size 100 bytes" in out
    assert (f"{flipped.name[:12]} │ bad │ train.jsonl: content hash differs from the one "
            "recorded at publish") in out
    assert f"{old.name[:12]} │ unverified │ no content hashes" in out
    assert good.name[:12] not in out
    assert "verify checked 4 entries: 2 bad, 1 without hashes." in out
    assert "python -m llmops.store verify --repair" in out

    r = llmops("verify", "--repair", module="llmops.store", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stdout.count(": moved aside to outputs/store/.corrupt/data-") == 2
    assert not short.exists() and not flipped.exists() and good.exists() and old.exists()
    aside = sorted((store / ".corrupt").iterdir())
    assert len(aside) == 2
    reasons = {json.loads((a / "_moved_aside.json").read_text())["from"] for a in aside}
    assert reasons == {str(short), str(flipped)}
    r = llmops("verify", module="llmops.store", cwd=tmp_path)
    assert r.returncode == 0 and "2 entries: 0 bad, 1 without hashes." in " ".join(r.stdout.split())


def test_gc_keeps_a_moved_runs_entries_until_it_is_found_or_forced(compose_plan, tmp_path,
                                                                   capsys):
    store = tmp_path / "outputs" / "store"  # the default store, seen from tmp_path
    entry = _data_run(compose_plan, store, tmp_path / "runs" / "a", 100)
    moved = tmp_path / "elsewhere" / "a"
    moved.parent.mkdir()
    shutil.move(tmp_path / "runs" / "a", moved)

    def gc(*args: str) -> str:  # as README.md writes it
        r = llmops("gc", *args, module="llmops.store", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        return r.stdout

    out = gc("--dry-run")
    assert f"run folder missing: {tmp_path / 'runs' / 'a'}" in out
    assert "gc would remove 0 folders" in out and "pass --runs DIR where they are now" in out
    out = _gc(capsys, store, "--older-than", "0")
    assert "gc removed 0 folders" in out and entry.is_dir()
    out = _gc(capsys, store, "--older-than", "0", "--force", "--runs", str(tmp_path / "elsewhere"))
    assert f"used by {moved}" in out and "gc removed 0 folders" in out and entry.is_dir()
    assert (moved / "stages" / "data" / "train.jsonl").is_file()
    out = gc("--force")  # the default grace period: 1 day
    assert "younger than grace period (" in out and entry.is_dir()
    out = gc("--force", "--older-than", "0")
    assert "gc removed 1 folders" in out and not entry.exists()
    assert list((store / ".runs").iterdir()) == [], "--force forgets the missing run"
    assert "gc removed 0 folders" in gc()


def test_gc_never_leaves_a_readable_run_folder_with_dangling_links(compose_plan, tmp_path,
                                                                   capsys):
    store = tmp_path / "store"
    run = tmp_path / "runs" / "b"
    linked = _data_run(compose_plan, store, run, 100)
    # An earlier run in the same folder used other data; the folder now links only `linked`.
    unlinked = _data_run(compose_plan, store, run, 200)
    _data_run(compose_plan, store, run, 100)
    (run / "manifest.json").write_text('{"stages": {"data": ')  # damaged

    out = _gc(capsys, store)
    assert f"manifest unreadable: {run / 'manifest.json'}" in out
    assert f"linked from {run / 'stages'}" in out
    assert "gc removed 0 folders" in out
    out = _gc(capsys, store, "--older-than", "0", "--force")
    assert "gc removed 1 folders" in out and not unlinked.exists()
    assert linked.is_dir() and (run / "stages" / "data" / "train.jsonl").is_file()


def test_gc_keeps_everything_a_run_record_cannot_rule_out(compose_plan, tmp_path, capsys):
    store = tmp_path / "store"
    entry = _data_run(compose_plan, store, tmp_path / "runs" / "c", 100)
    shutil.rmtree(tmp_path / "runs" / "c")
    for record in (store / ".runs").iterdir():
        record.unlink()  # nothing left that names the entry: it is unreferenced ...
    legacy = store / ".runs" / "0123456789abcdef.json"  # ... but an old record lists no stages
    legacy.write_text(json.dumps({"run_dir": str(tmp_path / "runs" / "gone")}))
    (store / ".runs" / "fedcba9876543210.json").write_text("{not json")

    out = _gc(capsys, store)
    assert (f"run folder missing: {tmp_path / 'runs' / 'gone'} (its record lists no stages) "
            "(+1 more)") in out
    assert "gc removed 0 folders" in out and entry.is_dir()
    legacy.unlink()
    out = _gc(capsys, store, "--older-than", "0")
    assert f"run record unreadable: {store / '.runs' / 'fedcba9876543210.json'}" in out
    assert "gc removed 0 folders" in out and entry.is_dir()
    out = _gc(capsys, store, "--older-than", "0", "--force")
    assert "gc removed 1 folders" in out and not entry.exists()
    assert list((store / ".runs").iterdir()) == []


def test_gc_leaves_an_entry_alone_while_a_job_holds_its_lock(compose_plan, tmp_path, capsys):
    from llmops.store.cas import Store

    store = tmp_path / "store"
    entry = _data_run(compose_plan, store, tmp_path / "runs" / "d", 100)
    shutil.rmtree(tmp_path / "runs" / "d")
    lock = Store(store).lock_for(entry.name)
    with lock:
        out = _gc(capsys, store, "--older-than", "0", "--force")
    assert "a job took its lock during gc" in out and entry.is_dir()
    assert "gc removed 1 folders" in _gc(capsys, store, "--older-than", "0", "--force")


def test_gc_rejects_an_age_it_cannot_read(tmp_path):
    (tmp_path / "outputs" / "store").mkdir(parents=True)
    r = llmops("gc", "--older-than", "yesterday", module="llmops.store", cwd=tmp_path)
    assert r.returncode == 2
    assert ("argument --older-than: 'yesterday' is not an age: use a number and a unit "
            "(s, m, h, d, w), e.g. 12h or 7d; 0 means no grace period.") in r.stderr


def _complete(pattern: str) -> list[Path]:
    from llmops.store.integrity import checkpoint_problem

    found = [Path(p).parent for p in glob.glob(pattern)]
    return sorted((c for c in found if checkpoint_problem(c) is None),
                  key=lambda c: int(c.name.rsplit("-", 1)[1]))


def kill_truncate_and_rerun(tmp_path: Path, args: list[str], newer_than: int = 0) -> dict:
    """Starts `python -m llmops ARGS` in tmp_path, kills the whole job (SIGKILL) once sft has two
    complete checkpoints past step `newer_than`, checks that each kind of damage makes a
    checkpoint incomplete, truncates the newest and reruns: the rerun resumes from the previous
    complete checkpoint and moves the truncated one aside. Returns the rerun's manifest.

    A killed job publishes nothing and its rerun resumes (the kill-and-rerun check of resume),
    from the checkpoint it can trust: tests/config/test_hardening_validate.py's stop chain ends
    with this (one chain of jobs and one rerun for every kind of stop).
    """
    from llmops.store.cas import latest_checkpoint
    from llmops.store.integrity import checkpoint_problem

    max_steps = int(next(a for a in args if a.startswith("train.max_steps=")).split("=")[1])
    proc = _start_until_checkpoint(tmp_path, args, newer_than)

    def newer() -> list[Path]:
        return [c for c in _complete(str(tmp_path / CHECKPOINT))
                if int(c.name.rsplit("-", 1)[1]) > newer_than]

    deadline = time.time() + 120
    while len(newer()) < 2 and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    store = tmp_path / "outputs" / "store"
    assert glob.glob(str(tmp_path / CHECKPOINT))
    assert not (store / "sft").exists(), "a killed job must publish nothing"
    *_, older, newest = newer()
    work = newest.parent.parent
    assert latest_checkpoint(work)[0] == newest

    # Each kind of damage makes a checkpoint incomplete (checked on copies of the real one).
    for name, damage, problem in [
        ("adapter_model.safetensors", "truncate", "incomplete safetensors file"),
        ("optimizer.pt", "truncate", "incomplete torch file"),
        ("trainer_state.json", "garbage", "trainer_state.json unreadable"),
    ]:
        copy = tmp_path / "copies" / name / newest.name
        shutil.copytree(newest, copy)
        if damage == "truncate":
            with open(copy / name, "r+b") as f:
                f.truncate((copy / name).stat().st_size // 2)
        else:
            (copy / name).write_text('{"global_step": ')
        assert problem in (checkpoint_problem(copy) or ""), name

    with open(newest / "adapter_model.safetensors", "r+b") as f:
        f.truncate((newest / "adapter_model.safetensors").stat().st_size - 7)
    assert latest_checkpoint(work)[0] == older
    step = int(older.name.rsplit("-", 1)[1])
    corrupt = store / ".corrupt"  # what earlier stops of a chain left aside, if any
    before = set(corrupt.iterdir()) if corrupt.is_dir() else set()

    r = llmops(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = [m for p in (tmp_path / "outputs" / "runs").glob("*/*/manifest.json")
              if (m := json.loads(p.read_text()))["status"] == "succeeded"]
    sft = run["stages"]["sft"]
    assert sft["status"] == "resumed" and sft["resumed_from_step"] == step >= 5
    assert run["stages"]["data"]["status"] == "cached"
    report = json.loads((Path(sft["path"]) / "training_report.json").read_text())
    assert report["resumed_from_step"] == sft["resumed_from_step"]
    assert report["steps"] == max_steps
    assert list((store / ".work").iterdir()) == []  # published, so nothing left to resume
    log = r.stdout + r.stderr
    assert f"checkpoint {newest} is incomplete (adapter_model.safetensors:" in log
    (aside,) = set(corrupt.iterdir()) - before
    assert aside.name.startswith(f"work-{work.name}-checkpoints-{newest.name}-")
    return run
