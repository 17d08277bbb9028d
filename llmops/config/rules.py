"""Cross-field rules: checks that need more than one key, run on the whole validated config.

They live here, not in the schema's validators, so they see the final composition and name the key
the user should change.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from llmops.config.schema import AppConfig
from llmops.env import Environment
from llmops.errors import Problem
from llmops.scoring.gates import AUTO_GATES
from llmops.scoring.split import GATE_METRICS as KNOWN_METRICS
from llmops.scoring.split import KINDS
from llmops.scoring.split import METRICS as SPLIT_METRICS

if TYPE_CHECKING:
    from llmops.config.resolve import Resolved

TASK_API_TOOLS = ("create_task", "list_tasks", "update_task", "complete_task", "delete_task")


def cross_field_problems(cfg: AppConfig, env: Environment, resolved: Resolved) -> list[Problem]:
    """Returns every cross-field problem of a schema-valid config.

    Args:
        cfg: The schema-valid config.
        env: Facts about this machine (installed packages, GPUs).
        resolved: The config's "auto" values, resolved once (``llmops.config.resolve``).
    """
    problems: list[Problem] = []
    for rule in (_model, _adapter, _backend, _data, _eval, _deploy, _hardware, _tracking, _store):
        problems += rule(cfg, env)
    problems += _precision(cfg, resolved) + _compute(cfg, resolved)
    from llmops.config.rules.align import alignment_problems
    from llmops.config.rules.bind import bind_problems
    from llmops.config.rules.distributed import distributed_problems
    from llmops.config.rules.lora import target_problems
    from llmops.config.rules.release import release_problems

    problems += alignment_problems(cfg, env) + target_problems(cfg, env) + release_problems(cfg)
    problems += distributed_problems(cfg, env, resolved) + bind_problems(cfg)
    return problems


def _model(cfg: AppConfig, env: Environment) -> list[Problem]:
    m = cfg.model
    out = []
    if m.source == "hub" and not m.hub_id:
        out.append(Problem("model.hub_id",
                           "is required for a hub model. Set model.hub_id=org/name."))
    if m.source == "tiny":
        if m.pretrain is None:
            out.append(Problem("model.pretrain", "is required for model.source=tiny."))
        else:
            bad = [t for t in [*m.pretrain.tools, *m.pretrain.legacy_tools]
                   if t not in TASK_API_TOOLS]
            if bad:
                out.append(Problem(
                    "model.pretrain.tools",
                    f"unknown tool(s) {', '.join(bad)}. Allowed: {', '.join(TASK_API_TOOLS)}.",
                ))
    if m.num_attention_heads % m.num_kv_heads:
        out.append(Problem(
            "model.num_kv_heads",
            f"must divide num_attention_heads ({m.num_attention_heads}); got {m.num_kv_heads}.",
        ))
    if cfg.train.method != "none" and cfg.train.max_length > m.context_length:
        out.append(Problem(
            "train.max_length",
            f"{cfg.train.max_length} exceeds {m.name}'s context length {m.context_length}. "
            f"Use train.max_length={m.context_length} or less.",
        ))
    from llmops.config.templates import template_problems

    return out + template_problems(cfg)


def _adapter(cfg: AppConfig, env: Environment) -> list[Problem]:
    out = []
    q, lora = cfg.quant.type, cfg.lora
    if q != "none" and not lora.enabled and cfg.train.method != "none":
        out.append(Problem(
            "quant.type",
            f"'{q}' freezes a quantized base, so it needs a LoRA adapter (got lora=none). "
            "Use lora=r16 with quant, or quant=none for full fine-tuning.",
        ))
    if q != "none" and not env.has("bitsandbytes"):
        out.append(Problem(
            "quant.type",
            f"'{q}' needs bitsandbytes, which is not installed. pip install 'llmops[quant]', "
            "or use quant=none.",
        ))
    if lora.enabled:
        ratio = lora.alpha / lora.r
        if not 0.125 <= ratio <= 8:
            out.append(Problem(
                "lora.alpha",
                f"alpha/r = {lora.alpha:g}/{lora.r} = {ratio:g} is outside 1/8..8, which usually "
                f"means a typo. Common: alpha = r or 2r, e.g. lora.alpha={2 * lora.r}.",
            ))
    if "8bit" in cfg.train.optimizer and not env.has("bitsandbytes"):
        out.append(Problem(
            "train.optimizer",
            f"'{cfg.train.optimizer}' needs bitsandbytes. pip install 'llmops[quant]', "
            "or use train.optimizer=adamw_torch.",
        ))
    return out


def _backend(cfg: AppConfig, env: Environment) -> list[Problem]:
    if cfg.train.backend != "unsloth" or cfg.train.method == "none":
        return []
    planning_gpu = cfg.dry_run and cfg.hardware.device == "cuda"
    if planning_gpu:
        return []
    missing = []
    if not env.cuda:
        missing.append("no CUDA GPU was found")
    if not env.has("unsloth"):
        missing.append("unsloth is not installed")
    if not missing:
        return []
    return [Problem(
        "train.backend",
        f"'unsloth' needs a CUDA GPU and pip install 'llmops[unsloth]' ({'; '.join(missing)}). "
        "Use train.backend=hf, or auto to pick unsloth only where it works.",
    )]


def _precision(cfg: AppConfig, resolved: Resolved) -> list[Problem]:
    p, hw = cfg.train.precision, resolved.hardware
    if p == "fp16" and resolved.device == "cpu":
        return [Problem("train.precision", "'fp16' training needs a GPU. Use train.precision=auto "
                                           "(fp32 on a CPU) or bf16.")]
    if p == "bf16" and resolved.device == "cuda" and hw["bf16"] is False:
        return [Problem("train.precision", f"'bf16' is not supported on {hw['gpu_name']}. "
                                           "Use train.precision=fp16 or auto.")]
    return []


def _data(cfg: AppConfig, env: Environment) -> list[Problem]:
    from llmops.config.rules.data import data_problems

    return data_problems(cfg.data, cfg.train.method)


def _eval(cfg: AppConfig, env: Environment) -> list[Problem]:
    out: list[Problem] = []
    if not cfg.eval.enabled or isinstance(cfg.eval.gates, str):
        return out
    for name, gate in cfg.eval.gates.items():
        key = f"eval.gates.{name}"
        if gate.metric is None:
            if name not in AUTO_GATES:
                out.append(Problem(
                    f"{key}.metric",
                    f"is required: '{name}' is not an auto gate ({', '.join(AUTO_GATES)}), so "
                    f"name its metric, e.g. {key}.metric=exact_match.",
                ))
            continue
        if gate.metric not in KNOWN_METRICS:
            from llmops.config.hints import did_you_mean

            out.append(Problem(
                f"{key}.metric",
                f"unknown metric '{gate.metric}'.{did_you_mean(gate.metric, KNOWN_METRICS)} "
                f"Known: {', '.join(SPLIT_METRICS)}; or KIND.METRIC for one kind of row "
                f"(KIND: {', '.join(KINDS)}; e.g. text.rouge_l, tool.exact_match).",
            ))
        if gate.threshold is None and gate.tolerance is None:
            out.append(Problem(
                f"{key}.threshold",
                "is required: set a threshold (e.g. 0.8), or a tolerance for a no-regression "
                "gate against the base model (a number, or auto: by the test split's size).",
            ))
    return out


def _deploy(cfg: AppConfig, env: Environment) -> list[Problem]:
    d = cfg.deploy
    if d.target == "none" or cfg.train.method == "none":
        return []
    if not d.formats:
        return [Problem("deploy.formats", "is empty; list what to export, e.g. "
                                          "deploy.formats=[adapter,merged], or use deploy=none.")]
    if d.formats == ["adapter"] and not cfg.lora.enabled:
        return [Problem("deploy.formats", "'adapter' needs a LoRA adapter (got lora=none). "
                                          "Use deploy.formats=[merged].")]
    from llmops.config.rules.deploy import serving_problems

    return serving_problems(cfg, env)


def _hardware(cfg: AppConfig, env: Environment) -> list[Problem]:
    hw = cfg.hardware
    if hw.device == "cuda" and not env.cuda and not cfg.dry_run:
        return [Problem(
            "hardware",
            f"'{hw.name}' is a GPU profile, but this machine has no CUDA GPU. Add dry_run=true "
            "to plan for it without running, or use hardware=auto (or cpu) to run here.",
        )]
    return []


def _tracking(cfg: AppConfig, env: Environment) -> list[Problem]:
    t = cfg.tracking
    if t.backend != "wandb" or t.mode == "disabled" or cfg.dry_run or env.has("wandb"):
        return []
    return [Problem("tracking.backend", "'wandb' needs wandb, which is not installed. "
                                        "pip install 'llmops[tracking]', or use tracking=none.")]


def _store(cfg: AppConfig, env: Environment) -> list[Problem]:
    """Checks, without writing, that store_dir is or can become a folder this process can write.

    A dry run writes nothing to the store, so it is not checked there (it may plan for another
    machine's shared filesystem).
    """
    if cfg.dry_run:
        return []
    store = Path(cfg.store_dir).expanduser().absolute()
    fix = "Point store_dir=DIR (or LLMOPS_STORE) at a folder you can write to."
    existing = next(p for p in (store, *store.parents) if p.exists())
    if not existing.is_dir():
        what = "is a file" if existing == store else f"cannot be created: {existing} is a file"
        return [Problem("store_dir", f"{store} {what}. Remove that file, or use another folder. "
                                     f"{fix}")]
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == store else f" ({store} would be created in it)"
        return [Problem("store_dir", f"{existing} is not writable{where}: check its permissions, "
                                     f"a read-only mount, or the immutable flag (lsattr). {fix}")]
    return []


def _compute(cfg: AppConfig, resolved: Resolved) -> list[Problem]:
    from llmops.config.rules.compute import compute_problems

    return compute_problems(cfg, resolved)
