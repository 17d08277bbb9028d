"""Cross-field rules of the tracking group: W&B needs wandb installed (unless it cannot log)."""

from __future__ import annotations

from llmops.config.schema import AppConfig
from llmops.env import Environment
from llmops.errors import Problem


def tracking_problems(cfg: AppConfig, env: Environment) -> list[Problem]:
    """Returns the problem of tracking=wandb without wandb, in a run that would log."""
    t = cfg.tracking
    if t.backend != "wandb" or t.mode == "disabled" or cfg.dry_run or env.has("wandb"):
        return []
    return [Problem("tracking.backend", "'wandb' needs wandb, which is not installed. "
                                        "pip install 'llmops[tracking]', or use tracking=none.")]
