"""Errors that reach the user, and the exit codes they map to."""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_STAGE_FAILED = 1
EXIT_CONFIG = 2
EXIT_GATE_FAILED = 3
EXIT_NO_GO = 4
EXIT_INTERRUPTED = 130


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


class GateFailed(LlmopsError):
    """Evaluation did not pass its quality gates, so the plan stops before export."""

    exit_code = EXIT_GATE_FAILED


class NoGo(LlmopsError):
    """The decide stage recommends against fine-tuning."""

    exit_code = EXIT_NO_GO
