"""Cross-field rules: checks that need more than one key, run on the whole validated config.

They live here, not in the schema's validators, so they see the final composition and name the key
the user should change. Each group's rules are a module of this package; this one runs them all,
in a fixed order (the order the problems are reported in).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmops.config.rules.align import alignment_problems
from llmops.config.rules.bind import bind_problems
from llmops.config.rules.compute import compute_problems
from llmops.config.rules.data import data_problems
from llmops.config.rules.deploy import deploy_problems
from llmops.config.rules.distributed import distributed_problems
from llmops.config.rules.eval import gate_problems
from llmops.config.rules.hardware import hardware_problems
from llmops.config.rules.lora import alpha_problems, target_problems
from llmops.config.rules.model import model_problems
from llmops.config.rules.monitor import monitor_problems
from llmops.config.rules.openai_ft import openai_problems
from llmops.config.rules.quant import quant_problems
from llmops.config.rules.release import release_problems
from llmops.config.rules.store import store_problems
from llmops.config.rules.tracking import tracking_problems
from llmops.config.rules.train import backend_problems, optimizer_problems, precision_problems
from llmops.config.schema import AppConfig
from llmops.env import Environment
from llmops.errors import Problem

if TYPE_CHECKING:
    from llmops.config.resolve import Resolved


def cross_field_problems(cfg: AppConfig, env: Environment, resolved: Resolved) -> list[Problem]:
    """Returns every cross-field problem of a schema-valid config.

    Args:
        cfg: The schema-valid config.
        env: Facts about this machine (installed packages, GPUs).
        resolved: The config's "auto" values, resolved once (``llmops.config.resolve``).
    """
    return [
        *model_problems(cfg),
        *quant_problems(cfg, env), *alpha_problems(cfg), *optimizer_problems(cfg, env),
        *backend_problems(cfg, env), *openai_problems(cfg),
        *data_problems(cfg.data, cfg.train.method),
        *gate_problems(cfg),
        *deploy_problems(cfg, env),
        *hardware_problems(cfg, env),
        *tracking_problems(cfg, env),
        *store_problems(cfg),
        *precision_problems(cfg, resolved),
        *compute_problems(cfg, resolved),
        *alignment_problems(cfg, env),
        *target_problems(cfg, env),
        *release_problems(cfg),
        *monitor_problems(cfg),
        *distributed_problems(cfg, env, resolved),
        *bind_problems(cfg),
    ]
