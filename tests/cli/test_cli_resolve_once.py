"""Each point is validated and resolved once per process that runs it (llmops.cli).

The pre-flight validates and resolves every point; a job Hydra runs in the same process takes
what the pre-flight checked, and a job a launcher starts in another process (joblib) resolves
there, once. Counted on the real `validate_and_resolve`, wrapped in every Python process the
command starts (a sitecustomize on PYTHONPATH), each call written as its process id to a file.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from pathlib import Path

COUNTER = '''\
import os

import llmops.config.validate as _validate

_real = _validate.validate_and_resolve


def _counted(*args, **kwargs):
    with open(os.environ["LLMOPS_TEST_RESOLVE_COUNT"], "a") as f:
        f.write(f"{os.getpid()}\\n")
    return _real(*args, **kwargs)


_validate.validate_and_resolve = _counted
'''


def _calls(tmp_path: Path, *args: str) -> tuple[int, collections.Counter[int]]:
    """Runs `python -m llmops ARGS`; returns (its pid, validate_and_resolve calls per pid)."""
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(COUNTER)
    counts = tmp_path / "calls.txt"
    counts.write_text("")
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
           "LLMOPS_TEST_RESOLVE_COUNT": str(counts),
           "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "llmops", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "dry run: nothing ran" in out
    return proc.pid, collections.Counter(int(line) for line in counts.read_text().split())


def test_a_dry_run_validates_and_resolves_once(tmp_path):
    pid, calls = _calls(tmp_path, "model=qwen3b", "hardware=a100_40g", "dry_run=true")
    assert calls == {pid: 1}


def test_a_sweep_run_in_one_process_validates_each_point_once(tmp_path):
    pid, calls = _calls(tmp_path, "-m", "lora=r8,r16", "dry_run=true")
    assert calls == {pid: 2}  # the pre-flight's; the jobs (same process) take them


def test_a_job_in_another_process_resolves_there_once(tmp_path):
    """Also the joblib launcher's real sweep for test_hardening_config's
    test_a_multirun_on_a_launcher_plugin_runs_without_the_bad_parts: its plugin's targets pass
    the pre-flight and each point writes its plan."""
    pid, calls = _calls(tmp_path, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                        "lora=r8,r16", "dry_run=true", "hydra.sweep.dir=sweep")
    assert calls.pop(pid) == 2  # the pre-flight checks both points
    assert sum(calls.values()) == 2  # each job once, in the worker that runs it
    assert len(list((tmp_path / "sweep").glob("*/plan.json"))) == 2
