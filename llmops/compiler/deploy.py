"""Builds the gguf and deploy stages. Pure: no torch.

The gguf stage needs export and deploy.gguf.quantization; the deploy stage (ollama, openai) needs
the gguf stage. A plan whose quantization is empty and whose target is local gets neither, so its
fingerprints stay as they were.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmops.compiler.inputs import PlanBuilder, StageInputs


def _data(b: PlanBuilder) -> list[str]:
    return ["data"] if b.has("data") else []


def add_gguf(b: PlanBuilder, s: StageInputs) -> None:
    """Adds the gguf stage (deploy.gguf.quantization set, after export): llama.cpp conversion."""
    g = s.cfg.deploy.gguf
    if not g.quantization or not b.has("export"):
        return
    b.add("gguf", {"model": s.model, "quantization": list(g.quantization),
                   "parity_prompts": g.parity_prompts, "max_new_tokens": g.max_new_tokens},
          ["export", *_data(b), *s.base],
          f"llama.cpp convert -> {', '.join(g.quantization)}; tokenizer, template and greedy "
          f"parity on {g.parity_prompts} held-out prompts")


def add_deploy(b: PlanBuilder, s: StageInputs) -> None:
    """Adds the deploy stage (deploy=ollama, openai, after gguf): serve and smoke-test the GGUF."""
    cfg = s.cfg
    dp, g = cfg.deploy, cfg.deploy.gguf
    if dp.target not in ("ollama", "openai") or not b.has("gguf"):
        return
    has_eval = b.has("eval")
    params = {
        "target": dp.target, "model": {**s.model, "context_length": cfg.model.context_length},
        "serve_quantization": g.quantization[0], "allow_failed_gates": dp.allow_failed_gates,
        "eval_enabled": has_eval, "eval_enforce": cfg.eval.enforce,
        "max_new_tokens": cfg.eval.max_new_tokens,
        "http_total_seconds": cfg.limits.http_total_seconds,
    }
    if dp.target == "ollama":
        params["ollama"] = dp.ollama.model_dump()
        what = f"Modelfile from the {cfg.model.chat_template} template; ollama create at " \
               f"{dp.ollama.host} when reachable"
    else:
        params["openai"] = dp.openai.model_dump()
        params["keep_serving"] = dp.keep_serving
        what = (f"serve {g.quantization[0]} GGUF on {dp.openai.host} (llama-cpp-python), smoke "
                f"test via the openai client{', keep serving' if dp.keep_serving else ''}")
    b.add("deploy", params, ["gguf", "export", *(["eval"] if has_eval else []), *_data(b)], what)
