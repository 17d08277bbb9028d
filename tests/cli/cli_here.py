"""Runs `python -m llmops ARGS` as `llmops.cli.main(ARGS)` in the test's own process.

For commands the pre-flight refuses (a config error: exit 2 before Hydra writes or runs anything):
what such a test checks is the pre-flight's verdict, its message and that nothing is written, not
the process, and a process of its own costs ~1 CPU-s of imports and composition each. The tests
that are about the process itself (its import path: a module of the working folder; its
environment at start: HF_HOME, the hub) and the commands that run (a dry run, a sweep) still start
`python -m llmops`, and each exit path keeps such a real-process check (test_hardening_config's
issue command, test_hardening_gaps' search-path tests, test_reachability).
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

#: What the subprocess helpers (test_hardening_config.llmops) set for every run.
ENV = {"WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@contextlib.contextmanager
def _process_state(cwd: Path, env: dict[str, str]):
    """Sets the working folder and environment variables a fresh process would get; puts back
    those, sys.argv and the per-process memos of the pre-flight afterwards."""
    from llmops.cli import job
    from llmops.config.hydra import compose

    old_cwd, old_argv, old_env = os.getcwd(), list(sys.argv), dict(os.environ)
    compose._COMPOSED.clear()  # memoised per process, by overrides (a relative -cd included)
    job._HANDED.clear()
    os.chdir(cwd)
    os.environ.update(env)
    try:
        yield
    finally:
        os.chdir(old_cwd)
        sys.argv[:] = old_argv
        os.environ.clear()
        os.environ.update(old_env)
        compose._COMPOSED.clear()
        job._HANDED.clear()


def llmops_here(*args: str, cwd: Path, env: dict[str, str] | None = None,
                ) -> subprocess.CompletedProcess:
    """Runs llmops.cli.main(args) in cwd with env; returns its exit code (SystemExit's, 0 when
    main returns) and what it printed, as a CompletedProcess. Any other exception propagates (a
    traceback, where a process would print one)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with _process_state(cwd, {**ENV, **(env or {})}), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        from llmops.cli import main

        try:
            main(list(args))
        except SystemExit as exc:
            if isinstance(exc.code, int) or exc.code is None:
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
                code = 1
    return subprocess.CompletedProcess(["llmops", *args], code, out.getvalue(), err.getvalue())
