"""Hardening: values that used to pass validation and fail later, an unwritable store, SIGTERM."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from test_store_integrity import kill_truncate_and_rerun
from test_supervise import _manifest as _last_manifest
from test_supervise import _stage_process
from test_sweeps import CHECKPOINT, TRAIN_ONLY, _start_until_checkpoint, _stderr, _steps, llmops

from llmops.errors import EXIT_CONFIG, EXIT_STAGE_FAILED, ConfigError

_SEED = "Seeds must fit numpy and torch: 0 ≤ seed < 2**32, e.g. {key}=0."
_LLAMA = ("Allowed for {family} models: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, "
          "down_proj, embed_tokens, lm_head, or lora.target_modules=all-linear.")

# (overrides, key, message): the values a hostile user found (issue 10, item 5), then others of the
# same kinds on other groups (learning rates, fractions, dropout, weights, beta, ports, ...).
HOSTILE = [
    (["train.epochs=inf"], "train.epochs", "must be a finite number > 0 and ≤ 1000 (got inf)."),
    (["train=sft_dpo", "train.dpo.epochs=inf"], "train.dpo.epochs",
     "must be a finite number > 0 and ≤ 1000 (got inf)."),
    (["seed=-1"], "seed", "must be ≥ 0 (got -1). " + _SEED.format(key="seed")),
    (["train.seed=99999999999999999999999"], "train.seed",
     "must be < 4294967296 (got 99999999999999999999999). " + _SEED.format(key="train.seed")),
    (["lora.target_modules=[]"], "lora.target_modules",
     "must not be an empty list (got []). List module names, e.g. "
     "lora.target_modules=[q_proj,v_proj], or use lora.target_modules=all-linear."),
    (["lora.target_modules=[nonexistent_proj]"], "lora.target_modules",
     "'nonexistent_proj' is not a module of llama models. " + _LLAMA.format(family="llama")),
    (["model=qwen0.5b", "dry_run=true", "lora.target_modules=[q_proj,vproj]"],
     "lora.target_modules",
     "'vproj' is not a module of qwen2 models. Did you mean 'v_proj'? "
     + _LLAMA.format(family="qwen2")),
    (["lora.target_modules=[self_attn]"], "lora.target_modules",
     "'self_attn' names a block LoRA cannot wrap (only linear and embedding layers). "
     + _LLAMA.format(family="llama")),
    (["merge=default", "merge.weights=[nan]"], "merge.weights.0",
     "must be a finite number (got nan). One finite weight per adapter, e.g. "
     "merge.weights=[0.5,0.5]."),
    (["train.max_steps=99999999999999999999999"], "train.max_steps",
     "must be ≤ 10000000 (got 99999999999999999999999)."),
    (["lora.r=true"], "lora.r",
     "must be an integer ≥ 1 and ≤ 1024 (got True). Use lora=none to train without LoRA."),
    (["store_dir="], "store_dir",
     "must not be empty (got ''). Set store_dir=DIR (or the LLMOPS_STORE environment variable) "
     "to the folder that keeps finished stages."),
    (["model=qwen3b", "dry_run=true", "model.hub_id="], "model.hub_id",
     "must not be empty (got ''). Set model.hub_id=org/name (a Hugging Face model id or a local "
     "model folder), or null for model=tiny."),
    (["train.learning_rate=nan"], "train.learning_rate",
     "must be a finite number > 0 and < 1 (got nan). Typical values: 1e-4 to 2e-4 for 1B+ "
     "models, 2e-3 for model=tiny."),
    (["lora.dropout=nan"], "lora.dropout", "must be a finite number ≥ 0 and < 1 (got nan)."),
    (["lora.alpha=true"], "lora.alpha", "must be a number > 0 (got True)."),
    (["train=sft_dpo", "train.dpo.beta=inf"], "train.dpo.beta",
     "must be a finite number > 0 and ≤ 100 (got inf)."),
    (["eval.gates.accuracy.threshold=inf"], "eval.gates.accuracy.threshold",
     "must be a finite number ≥ 0 and ≤ 1 (got inf). Metrics are rates; e.g. "
     "eval.gates.accuracy.threshold=0.8."),
    (["data.val_fraction=nan"], "data.val_fraction",
     "must be a finite number ≥ 0 and < 1 (got nan)."),
    (["deploy=openai", "deploy.openai.port=true"], "deploy.openai.port",
     "must be an integer ≥ 0 and ≤ 65535 (got True)."),
    (["hardware=t4", "dry_run=true", "hardware.gpu_memory_gb=inf"], "hardware.gpu_memory_gb",
     "must be a finite number > 0 and ≤ 100000 (got inf)."),
    (["usecase.investment_usd=inf"], "usecase.investment_usd",
     "must be a finite number ≥ 0 and ≤ 1000000000000 (got inf)."),
    (["train.batch_size=true"], "train.batch_size",
     "must be an integer ≥ 1 and ≤ 65536 or 'auto' (got True)."),
]


@pytest.mark.parametrize("overrides,key,message", HOSTILE, ids=[" ".join(c[0]) for c in HOSTILE])
def test_a_value_that_would_fail_later_is_a_config_error_naming_the_key(overrides, key, message):
    from llmops.cli import check

    with pytest.raises(ConfigError) as err:
        check(overrides)
    assert err.value.exit_code == EXIT_CONFIG
    assert f"{key}: {message}" in [str(p) for p in err.value.problems], err.value.render()


def test_hostile_values_exit_2_before_anything_is_written(tmp_path):
    r = llmops("train.epochs=inf", "dry_run=true", "lora.r=true", "seed=-1", "store_dir=",
               "merge=default", "merge.weights=[nan]", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr  # the dry run's compute plan used to overflow on inf
    for line in ("  - train.epochs: must be a finite number > 0 and ≤ 1000 (got inf).",
                 "  - lora.r: must be an integer ≥ 1 and ≤ 1024 (got True).",
                 "  - seed: must be ≥ 0 (got -1).", "  - store_dir: must not be empty (got '').",
                 "  - merge.weights.0: must be a finite number (got nan)."):
        assert line in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_target_module_names_are_those_of_the_real_architectures():
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    from llmops.config.rules.lora import module_names

    for family, config in (("llama", LlamaConfig), ("qwen2", Qwen2Config)):
        cfg = config(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, vocab_size=512)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
        real = {name: isinstance(m, torch.nn.Linear | torch.nn.Embedding)
                for name, m in model.named_modules() if name}
        assert module_names(family, 2) == real, family
    assert module_names("mistral", 2) is None  # unknown family: any names are accepted


def test_a_store_under_a_file_exits_2_naming_the_path_and_writes_nothing(tmp_path):
    (tmp_path / "blocker").write_text("not a folder")
    r = llmops(f"store_dir={tmp_path / 'blocker' / 'store'}", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert (f"  - store_dir: {tmp_path / 'blocker' / 'store'} cannot be created: "
            f"{tmp_path / 'blocker'} is a file. Remove that file, or use another folder. Point "
            "store_dir=DIR (or LLMOPS_STORE) at a folder you can write to.") in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


DATA_ONLY = ["model=qwen0.5b", "train=none", "eval=none", "deploy=none", "usecase=none"]


def _manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def test_a_file_in_the_store_fails_the_stage_with_the_path_and_the_manifest_says_failed(
        compose_plan, tmp_path):
    from llmops.errors import StoreError
    from llmops.runner.run import run_plan

    store = tmp_path / "store"
    _, plan = compose_plan([*DATA_ONLY, f"store_dir={store}"])
    store.mkdir()
    (store / ".tmp").write_text("in the way")  # where stages get their private work folders
    with pytest.raises(StoreError) as err:
        run_plan(plan, tmp_path / "run")
    text = str(err.value)
    assert text.startswith(f"store {store}: cannot write {store / '.tmp'}/data-")
    assert text.endswith("(Not a directory). A file is in the way: remove it, or point "
                         "store_dir=DIR (or LLMOPS_STORE) at a folder you can write to.")
    manifest = _manifest(tmp_path / "run")
    assert manifest["status"] == "failed" and manifest["failed_stage"] == "data"
    assert manifest["stages"]["data"] == {**manifest["stages"]["data"], "status": "failed",
                                          "error": text}


def test_an_unregistrable_store_fails_the_run_and_the_manifest_says_failed(compose_plan,
                                                                           tmp_path):
    from llmops.errors import StoreError
    from llmops.runner.run import run_plan

    store = tmp_path / "store"
    _, plan = compose_plan([*DATA_ONLY, f"store_dir={store}"])
    store.mkdir()
    (store / ".runs").write_text("in the way")  # the registry of run folders, written first
    with pytest.raises(StoreError, match=f"cannot write {store / '.runs'}"):
        run_plan(plan, tmp_path / "run")
    manifest = _manifest(tmp_path / "run")
    assert manifest["status"] == "failed", "never left 'running'"
    assert manifest["error"].startswith(f"store {store}: cannot write {store / '.runs'}")


def _immutable(folder: Path, on: bool) -> bool:
    chattr = shutil.which("chattr")
    if chattr is None:
        return False
    return subprocess.run([chattr, "+i" if on else "-i", str(folder)],
                          capture_output=True).returncode == 0


def test_an_immutable_store_is_refused_before_the_run_and_fails_cleanly_at_run_time(
        compose_plan, tmp_path):
    from llmops.cli import check
    from llmops.errors import StoreError
    from llmops.runner.run import run_plan

    store = tmp_path / "store"
    store.mkdir()
    _, plan = compose_plan([*DATA_ONLY, f"store_dir={store}"])
    if not _immutable(store, True):
        pytest.skip("chattr +i is not available here (needs root on ext4/xfs/btrfs)")
    try:
        if os.access(store, os.W_OK):
            pytest.skip("this filesystem ignores the immutable flag for access()")
        with pytest.raises(ConfigError) as err:
            check([*DATA_ONLY, f"store_dir={store}"])
        assert [str(p) for p in err.value.problems] == [
            f"store_dir: {store} is not writable: check its permissions, a read-only mount, or "
            "the immutable flag (lsattr). Point store_dir=DIR (or LLMOPS_STORE) at a folder you "
            "can write to."]
        # Made immutable after the pre-flight: the run fails with the path, not a traceback.
        with pytest.raises(StoreError) as failed:
            run_plan(plan, tmp_path / "run")
    finally:
        _immutable(store, False)
    assert str(failed.value).endswith(
        "(Operation not permitted). Make it writable (its permissions, a read-only mount, "
        "lsattr's immutable flag), or point store_dir=DIR (or LLMOPS_STORE) at a folder you can "
        "write to.")
    assert _manifest(tmp_path / "run")["status"] == "failed"


def test_sigterm_is_raised_like_ctrl_c_only_where_sigterm_has_its_default_action():
    from llmops.cli.job import _sigterm_as_interrupt
    from llmops.errors import Terminated

    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with pytest.raises(Terminated):
            with _sigterm_as_interrupt():
                assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # or the kill kills
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

        def submitit_handler(signum, frame):  # what submitit's job environment installs
            pass

        signal.signal(signal.SIGTERM, submitit_handler)
        with _sigterm_as_interrupt():
            assert signal.getsignal(signal.SIGTERM) is submitit_handler
    finally:
        signal.signal(signal.SIGTERM, previous)


# Ctrl-C (SIGINT, which a terminal sends to the whole process group: the runner and its stage
# process) and SIGTERM (what docker stop and schedulers send, to the runner only) stop a
# run the same way: stage and run `interrupted`, no half-written stage, the checkpoint kept, resume.
STOPS = {
    "ctrl_c": (signal.SIGINT, 130,
               "interrupted: finished stages stay in the store; rerun to resume.",
               "KeyboardInterrupt"),
    "sigterm": (signal.SIGTERM, 143,
                "terminated (SIGTERM): finished stages stay in the store; rerun to resume.",
                "terminated by SIGTERM"),
}


@pytest.mark.slow
def test_a_stop_signal_marks_the_run_interrupted_keeps_the_checkpoint_and_the_rerun_resumes(
        tmp_path):
    """Each stop in turn on one chain, each job once it has trained past the checkpoint its
    predecessor kept: Ctrl-C (to the process group) stops the first job in sft, SIGTERM (to the
    runner) the second; the third loses its stage process to SIGKILL (what the kernel's
    out-of-memory killer sends: the runner records it, test_supervise's check); the fourth is
    killed whole and its newest checkpoint truncated (test_store_integrity's check); the one
    rerun resumes from the last complete checkpoint."""
    # stops past steps 5, 10, 15, then two checkpoints (20, 25) and the kill, 10 steps before
    # the end
    args = ["train.max_steps=35", "train.save_steps=5", *TRAIN_ONLY]
    store = tmp_path / "outputs" / "store"
    newer_than = 0
    for n, (sig, code, message, error) in enumerate(STOPS.values()):
        proc = _start_until_checkpoint(tmp_path, args, newer_than)
        stage = _stage_process(proc.pid)
        if sig == signal.SIGINT:  # a terminal's Ctrl-C: the runner and its stage process
            os.killpg(proc.pid, sig)
        else:  # SIGTERM to the runner only
            proc.send_signal(sig)
        proc.wait(timeout=120)
        err = _stderr(tmp_path)
        assert proc.returncode == code, err[-2000:]
        assert message in err
        # The stage stopped once, with the runner (its process is gone, at most a zombie).
        assert not psutil.pid_exists(stage.pid) or stage.status() == psutil.STATUS_ZOMBIE
        runs = sorted((tmp_path / "outputs/runs").glob("*/*/manifest.json"),
                      key=lambda p: p.stat().st_mtime)
        assert len(runs) == n + 1
        manifest = json.loads(runs[-1].read_text())
        assert manifest["status"] == "interrupted" and manifest["failed_stage"] == "sft"
        assert manifest["stages"]["sft"]["status"] == "interrupted"
        assert manifest["stages"]["sft"]["error"] == error
        # the data stage finished before the stop: ran by the first job, cached for its rerun
        assert manifest["stages"]["data"]["status"] == ("ran" if n == 0 else "cached")
        assert list((store / ".tmp").glob("*")) == [], "no half-written stage folder is left"
        assert glob.glob(str(tmp_path / CHECKPOINT)), "the checkpoint is kept for the rerun"
        assert not (store / "sft").exists()
        newer_than = max(_steps(tmp_path))

    # The stage process killed by SIGKILL: the runner outlives it and records the signal.
    proc = _start_until_checkpoint(tmp_path, args, newer_than)
    assert _last_manifest(tmp_path)["stages"]["sft"]["status"] == "running"
    os.kill(_stage_process(proc.pid).pid, signal.SIGKILL)
    proc.wait(timeout=120)
    err = _stderr(tmp_path)
    assert proc.returncode == EXIT_STAGE_FAILED, err[-3000:]
    manifest = _last_manifest(tmp_path)
    sft = manifest["stages"]["sft"]
    assert manifest["status"] == "failed" and manifest["failed_stage"] == "sft"
    assert sft["status"] == "failed" and sft["signal"] == "SIGKILL"
    assert sft["error"].startswith(
        "sft: the stage's process was killed by SIGKILL — most likely the kernel's "
        "out-of-memory killer: peak RSS ")
    # The compute plan's own figure for the sft stage (compute_plan.json stages.sft).
    assert "GB for this stage; fix: train.batch_size=8 (train.effective_batch stays" in sft["error"]
    assert sft["planned"]["what"] == "for this stage" and sft["planned"]["host_gb"] > 0
    assert 0.1 < sft["peak_rss_gb"] < 20, sft  # a torch process training the tiny model
    assert sft["error"] in err, "the same message on the terminal"
    assert list((store / ".tmp").glob("*")) == [], "no half-written stage folder"
    assert not (store / "sft").exists(), "nothing published"
    assert glob.glob(str(tmp_path / CHECKPOINT)), "the checkpoint stays for the rerun"

    # The fourth job killed whole (SIGKILL) at its second checkpoint past step 15, the newest of
    # them truncated: the rerun resumes from the other (test_store_integrity's check).
    rerun = kill_truncate_and_rerun(tmp_path, args, max(_steps(tmp_path)))
    assert rerun["status"] == "succeeded"
    sft = rerun["stages"]["sft"]
    assert sft["status"] == "resumed" and sft["resumed_from_step"] >= 20
    assert sft["peak_rss_gb"] > 0.1
