"""Errors that reach the user, and the exit codes they map to."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

EXIT_OK = 0
EXIT_STAGE_FAILED = 1
EXIT_CONFIG = 2
EXIT_GATE_FAILED = 3
EXIT_NO_GO = 4
EXIT_DATA_REJECTED = 5
EXIT_ALERT = 6  # python -m llmops.monitor: an alert fires
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, what a shell reports for a process SIGTERM ended


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the configuration: where, what, and how to fix it."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class LlmopsError(Exception):
    """Base class for errors that llmops reports to the user without a traceback."""

    exit_code = EXIT_STAGE_FAILED


class ConfigError(LlmopsError):
    """The configuration is invalid; carries every problem found at once."""

    exit_code = EXIT_CONFIG

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__(self.render())

    def render(self) -> str:
        n = len(self.problems)
        lines = [f"Config is invalid ({n} problem{'s' if n != 1 else ''}):"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


class StageError(LlmopsError):
    """A stage could not do its work; the message names the stage, the cause and the fix."""

    exit_code = EXIT_STAGE_FAILED


class StoreError(LlmopsError):
    """The stage store could not be created or written; names the path and the fix."""

    exit_code = EXIT_STAGE_FAILED

    @classmethod
    def from_os_error(cls, root: Path, exc: OSError) -> StoreError | None:
        """Returns the error for an OSError on a path inside the store root, else None."""
        paths = [Path(os.path.abspath(p)) for p in (exc.filename, exc.filename2)
                 if isinstance(p, str | Path)]
        root = Path(os.path.abspath(root))
        path = next((p for p in paths if p == root or root in p.parents), None)
        if path is None:
            return None
        first = {
            errno.ENOSPC: "free space (python -m llmops.store gc)",
            errno.EDQUOT: "free space (python -m llmops.store gc)",
            errno.ENOTDIR: "a file is in the way: remove it",
            errno.EEXIST: "a file is in the way: remove it",
            errno.EACCES: "make it writable (its permissions, a read-only mount, lsattr's "
                          "immutable flag)",
        }.get(errno.EACCES if exc.errno in (errno.EPERM, errno.EROFS) else exc.errno)
        fix = "point store_dir=DIR (or LLMOPS_STORE) at a folder you can write to"
        fix = f"{first}, or {fix}" if first else fix
        return cls(f"store {root}: cannot write {path} ({exc.strerror or exc}). "
                   f"{fix[0].upper()}{fix[1:]}.")


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, `docker stop`, `kill`) asked the run to stop: handled like Ctrl-C."""

    exit_code = EXIT_TERMINATED

    def __str__(self) -> str:
        return "terminated by SIGTERM"


class GateFailed(LlmopsError):
    """Evaluation did not pass its quality gates, so the plan stops before export."""

    exit_code = EXIT_GATE_FAILED


class DataRejected(LlmopsError):
    """The data stage found rows it rejects while ``data.on_error=fail``: nothing trains."""

    exit_code = EXIT_DATA_REJECTED


class NoGo(LlmopsError):
    """The decide stage recommends against fine-tuning."""

    exit_code = EXIT_NO_GO
