"""Cross-field rules of the hardware group: a GPU profile runs only where there is a GPU."""

from __future__ import annotations

from llmops.config.schema import AppConfig
from llmops.env import Environment
from llmops.errors import Problem


def hardware_problems(cfg: AppConfig, env: Environment) -> list[Problem]:
    """Returns the problem of a GPU profile on a machine without CUDA (unless a dry run)."""
    hw = cfg.hardware
    if hw.device == "cuda" and not env.cuda and not cfg.dry_run:
        return [Problem(
            "hardware",
            f"'{hw.name}' is a GPU profile, but this machine has no CUDA GPU. Add dry_run=true "
            "to plan for it without running, or use hardware=auto (or cpu) to run here.",
        )]
    return []
