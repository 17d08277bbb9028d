"""Cross-field rules of the deploy group: the export formats, GGUF export and the serving targets
(deploy=ollama, deploy=openai). Pure."""

from __future__ import annotations

from llmops.config.schema import AppConfig
from llmops.env import Environment
from llmops.errors import Problem
from llmops.planning.stage_memory import GGUF_KEY

SERVING = ("ollama", "openai")


def deploy_problems(cfg: AppConfig, env: Environment) -> list[Problem]:
    """Returns the problems of the deploy group in a config that trains: formats, then serving."""
    d = cfg.deploy
    if d.target == "none" or cfg.train.method == "none":
        return []
    if not d.formats:
        return [Problem("deploy.formats", "is empty; list what to export, e.g. "
                                          "deploy.formats=[adapter,merged], or use deploy=none.")]
    if d.formats == ["adapter"] and not cfg.lora.enabled:
        return [Problem("deploy.formats", "'adapter' needs a LoRA adapter (got lora=none). "
                                          "Use deploy.formats=[merged].")]
    return serving_problems(cfg, env)


def serving_problems(cfg: AppConfig, env: Environment) -> list[Problem]:
    """Returns the problems of deploy.gguf and the serving targets in a config that trains."""
    d, out = cfg.deploy, []
    serving = d.target in SERVING
    if serving and not d.gguf.planned:
        out.append(Problem(GGUF_KEY, f"is empty, but deploy={d.target} serves a GGUF file. "
                                     f"Set {GGUF_KEY}=[f16] (or q8_0, q4_k_m)."))
    if (serving or d.gguf.planned) and "merged" not in d.formats:
        out.append(Problem("deploy.formats",
                           f"{list(d.formats)} lacks 'merged'; GGUF conversion starts from the "
                           "merged model. Use deploy.formats=[adapter,merged]."))
    if (serving or d.gguf.planned) and not cfg.dry_run and not env.has("llama_cpp"):
        key = "deploy.target" if serving else GGUF_KEY
        out.append(Problem(key, "GGUF export needs llama-cpp-python, which is not installed. "
                                "pip install 'llmops[gguf]' && python -m llmops.gguf_setup, "
                                "or add dry_run=true to only plan."))
    if serving and not cfg.eval.enabled and not d.allow_failed_gates:
        out.append(Problem("deploy.allow_failed_gates",
                           f"eval is off, so nothing shows the model passed its gates; "
                           f"deploy={d.target} refuses it. Enable eval (eval=default), or "
                           "deploy.allow_failed_gates=true to deploy anyway."))
    return out
