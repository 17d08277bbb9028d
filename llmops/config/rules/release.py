"""Cross-field rules of the release group, and the formats a release holds. Pure.

`release_formats` is the one place ``release.formats: auto`` becomes a list: the rules check it
and the compiler puts it in the release stage's params.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmops.errors import Problem
from llmops.planning.stage_memory import GGUF_KEY

if TYPE_CHECKING:  # annotations only: the release stage imports its builder, not the schema
    from llmops.config.schema import AppConfig


def exported_formats(cfg: AppConfig) -> list[str]:
    """Returns the formats the plan of cfg exports: adapter and merged (export), gguf (gguf)."""
    d = cfg.deploy
    if d.target == "none" or cfg.train.method == "none" or cfg.train.backend == "openai":
        return []  # train.backend=openai: the model stays at OpenAI, nothing is exported
    out = [f for f in d.formats if cfg.lora.enabled or f != "adapter"]
    return out + (["gguf"] if d.gguf.planned else [])


def release_formats(cfg: AppConfig) -> list[str]:
    """Returns the formats the release holds: release.formats, or with auto every exported one."""
    given = cfg.release.formats
    return exported_formats(cfg) if given == "auto" else list(dict.fromkeys(given))


def _why_missing(cfg: AppConfig, fmt: str) -> str:
    d = cfg.deploy
    if cfg.train.backend == "openai":
        return ("train.backend=openai exports nothing (the fine-tuned model stays at OpenAI; "
                "the release names its id). Use release.formats=auto.")
    if fmt == "adapter" and not cfg.lora.enabled:
        return "lora=none trains no adapter. Use lora=r16, or drop adapter from release.formats."
    if fmt == "gguf":
        return (f"{GGUF_KEY} is empty, so no GGUF is written. Set {GGUF_KEY}=[f16] "
                "(deploy=openai and deploy=ollama set it), or drop gguf from release.formats.")
    return (f"deploy.formats={list(d.formats)} does not export it. Add it, e.g. "
            f"deploy.formats=[adapter,merged], or drop {fmt} from release.formats.")


def release_problems(cfg: AppConfig) -> list[Problem]:
    """Returns the problems of release=default in cfg: what the release needs the plan to make."""
    r = cfg.release
    if not r.enabled:
        return []
    if cfg.train.method == "none" or cfg.deploy.target == "none":
        what = "train=none trains" if cfg.train.method == "none" else "deploy=none exports"
        return [Problem("release.enabled", f"a release packages the exported model, but {what} "
                                           "none. Use deploy=local (or ollama, openai) with a "
                                           "training method, or release=none.")]
    out = []
    if not cfg.eval.enabled:
        out.append(Problem("release.enabled", "a release is made only of a model that passed its "
                                              "gates, but eval is off. Use eval=default, or "
                                              "release=none."))
    made = exported_formats(cfg)
    for fmt in release_formats(cfg):
        if fmt not in made:
            out.append(Problem("release.formats", f"'{fmt}' is not produced by this plan: "
                                                  f"{_why_missing(cfg, fmt)}"))
    return out
