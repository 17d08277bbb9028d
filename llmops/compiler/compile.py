"""Compiles a validated config and its resolution into a Plan. Pure and fast: no torch, no writes.

``compile_plan`` runs one builder per stage kind, in the stage table's order
(``llmops.core.plan.STAGE_ORDER``); each adds its stage when the config asks for it. A kind's
builder and its params type live in ``llmops.compiler.builders.<kind>``; builders read the config
and the `Resolved` values, and none of them resolves an "auto" itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from llmops import __version__
from llmops.compiler.builders.base import add_base
from llmops.compiler.builders.compute import add_compute
from llmops.compiler.builders.data import add_data
from llmops.compiler.builders.decide import add_decide
from llmops.compiler.builders.deploy import add_deploy
from llmops.compiler.builders.dpo import add_dpo
from llmops.compiler.builders.eval import add_eval
from llmops.compiler.builders.eval_base import add_eval_base
from llmops.compiler.builders.export import add_export
from llmops.compiler.builders.gguf import add_gguf
from llmops.compiler.builders.grpo import add_grpo
from llmops.compiler.builders.kto import add_kto
from llmops.compiler.builders.lm_eval import add_lm_eval
from llmops.compiler.builders.merge import add_merge
from llmops.compiler.builders.monitor import add_monitor
from llmops.compiler.builders.orpo import add_orpo
from llmops.compiler.builders.release import add_release
from llmops.compiler.builders.sft import add_sft
from llmops.compiler.builders.simpo import add_simpo
from llmops.compiler.inputs import PlanBuilder, StageInputs
from llmops.config.resolve import Resolved
from llmops.config.schema import AppConfig
from llmops.core.plan import STAGE_ORDER, Plan

# One builder per stage kind; compile_plan runs them in the stage table's order.
BUILDERS: dict[str, Callable[[PlanBuilder, StageInputs], None]] = {
    "decide": add_decide, "compute": add_compute, "base": add_base, "data": add_data,
    "sft": add_sft, "dpo": add_dpo, "orpo": add_orpo, "simpo": add_simpo, "kto": add_kto,
    "grpo": add_grpo, "merge": add_merge,
    "eval_base": add_eval_base,
    "lm_eval": add_lm_eval, "eval": add_eval, "export": add_export, "gguf": add_gguf,
    "deploy": add_deploy, "monitor": add_monitor, "release": add_release,
}


def compile_plan(cfg: AppConfig, resolved: Resolved) -> Plan:
    """Compiles a validated config into a Plan of stages with params and fingerprints.

    Args:
        cfg: The validated configuration.
        resolved: Its "auto" values, resolved once (``llmops.config.resolve.resolve``; the
            config rules saw the same object).

    Returns:
        The plan, in dependency order.
    """
    s = StageInputs.of(cfg, resolved)
    b = PlanBuilder()
    for kind in STAGE_ORDER:
        BUILDERS[kind](b, s)
    run = {
        "device": resolved.device, "backend": resolved.backend, "precision": resolved.precision,
        "threads": resolved.threads, "seed": cfg.seed,
        "store_dir": str(Path(cfg.store_dir).expanduser().resolve()),
        "store_verify": cfg.store.verify,
        "progress": cfg.progress, "dry_run": cfg.dry_run, "hardware": s.hardware,
    }
    return Plan(stages=tuple(b.stages), run=run, config=cfg.model_dump(), version=__version__)
