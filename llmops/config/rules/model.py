"""Cross-field rules of the model group (and its chat template)."""

from __future__ import annotations

from llmops.config.schema import AppConfig
from llmops.config.templates import template_problems
from llmops.errors import Problem

TASK_API_TOOLS = ("create_task", "list_tasks", "update_task", "complete_task", "delete_task")


def model_problems(cfg: AppConfig) -> list[Problem]:
    """Returns the problems of the model group: hub id, tiny pretraining tools, heads, length,
    chat template."""
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
    return out + template_problems(cfg)
